"""The sources registry: every source declares its schema, files, code trust and weights identity; identities of
existing entries are exactly what they were before the registry (feature caches and run records stay valid)."""

import textwrap

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from zoo_factory import run_cli

from riskdecomp import sources
from riskdecomp.features.datasets import load_dataset
from riskdecomp.features.encoders import build_encoder, entry_identity
from riskdecomp.runner.records import entry_key
from riskdecomp.sources.base import Entry, Source
from riskdecomp.zoo import parse_zoo

TV = f"timm{timm.__version__}"


def test_the_registry_lists_every_source_with_its_schema():
    assert sources.names() == ("timm", "torch_hub", "checkpoint", "features", "recipe", "huggingface")
    for name in sources.names():
        src = sources.get(name)
        assert issubclass(src.entry, Entry) and src.entry.model_fields["source"].annotation.__args__ == (name,)
        assert all(f in src.entry.model_fields for f in src.files)
        if src.runs_code:  # a source that runs a repository's code refuses entries without trust_repo: true
            assert "trust_repo" in src.entry.model_fields
    assert [n for n in sources.names() if sources.get(n).runs_code] == ["torch_hub"]
    assert [n for n in sources.names() if not sources.get(n).has_encoder] == ["features"]


def test_a_source_name_is_registered_once():
    with pytest.raises(ValueError, match="registered twice"):
        @sources.register
        class Again(Source):
            name = "timm"
            entry = sources.get("timm").entry


def test_an_unknown_source_names_every_registered_one(tmp_path, capsys):
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - {name: a, source: open_clip, model: x}\n")
    assert run_cli("zoo", "check", "--zoo", str(zoo)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("riskdecomp: error:") and len(err.splitlines()) == 1
    assert "unknown source 'open_clip'" in err and "huggingface" in err and "torch_hub" in err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    m = timm.create_model("test_resnet", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(d / "tr.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(d / "f.npz", x_train=rng.normal(size=(20, 3)).astype("f4"), y_train=np.arange(20) % 2,
             x_test=rng.normal(size=(10, 3)).astype("f4"), y_test=np.arange(10) % 2)
    return d


def _zoo(d):
    return parse_zoo({"models": [
        {"name": "rand", "source": "timm", "model": "test_resnet", "pretrained": False},
        {"name": "hubw", "source": "timm", "model": "vit_tiny_patch16_224", "pretrained": True,
         "representation": "cls", "image_size": 64},
        {"name": "filew", "source": "timm", "model": "test_resnet", "weights": "tr.safetensors"},
        {"name": "ck", "source": "checkpoint", "architecture": "test_resnet", "weights": "tr.safetensors",
         "image_size": 32, "model_kwargs": {"drop_rate": 0.0}},
        {"name": "hub", "source": "torch_hub", "repo": "facebookresearch/dino:main", "entrypoint": "dino_vits16",
         "trust_repo": True, "kwargs": {"a": 1}},
        {"name": "feats", "source": "features", "path": "f.npz"},
    ]}, d / "zoo.yaml")


def test_identities_of_existing_entries_are_unchanged(files, tmp_path, monkeypatch):
    """The identity strings (part of every feature-cache key and run key) as riskdecomp wrote them before the
    sources registry: a changed string would silently recompute every cache and invalidate every record. The
    exceptions identified too little (issue 24): a random init now names its init seed, a torch.hub entry the code
    of its repository (here a cached copy: nothing is downloaded)."""
    import hashlib
    import json

    from riskdecomp.sources.base import file_sha256

    repo = tmp_path / "hub" / "facebookresearch_dino_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text("dependencies = ['torch']\n")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    code = hashlib.sha256(json.dumps({"hubconf.py": file_sha256(repo / "hubconf.py")}).encode()).hexdigest()
    zoo, sha = _zoo(files), file_sha256(files / "tr.safetensors")
    assert entry_identity(zoo["rand"]) == f"timm|test_resnet|random-init|pooled|[]|{TV}|init-seed0"
    assert entry_identity(zoo["hubw"]) == f"timm|vit_tiny_patch16_224|hub:vit_tiny_patch16_224|cls|size64|[]|{TV}"
    assert entry_identity(zoo["filew"]) == f"timm|test_resnet|file:{sha}|pooled|[]|{TV}"
    assert entry_identity(zoo["ck"]) == f"ckpt|test_resnet|{sha}|pooled|size32|[('drop_rate', 0.0)]|{TV}"
    assert entry_identity(zoo["hub"]) == ("hub|facebookresearch/dino:main|dino_vits16|[('a', 1)]|pooled|"
                                          f"imagenet224|code:{code}|init-seed0")
    # a built encoder reports the identity the cache key was made from
    assert build_encoder(zoo["filew"]).identity == entry_identity(zoo["filew"])
    # a features entry is keyed by its file's content, not its location
    key = entry_key(zoo["feats"])
    assert key == {"name": "feats", "source": "features", "representation": "pooled", "reference": None,
                   "dataset": None, "path_sha256": file_sha256(files / "f.npz")}
    assert "weights" not in entry_key(zoo["filew"]) and entry_key(zoo["filew"])["identity"].endswith(TV)


def test_recipe_identity_is_unchanged(tmp_path):
    ds = load_dataset("digits")
    e = parse_zoo({"models": [{"name": "r", "source": "recipe",
                               "recipe": {"objective": "init", "width": 4, "z_dim": 8}}]})["r"]
    ident = entry_identity(e, ds, cache_dir=tmp_path)
    sha = ident.split("|")[3]
    assert ident == f"recipe|{e.recipe.key()}|{ds.fingerprint}|{sha}|pooled" and len(sha) == 64
    assert build_encoder(e, dataset=ds, cache_dir=tmp_path).weights_sha256 == sha


def test_zoo_list_asks_each_source_what_and_where_from(files, capsys):
    (files / "zoo.yaml").write_text(textwrap.dedent("""
        models:
          - {name: rand, source: timm, model: test_resnet, pretrained: false}
          - {name: ck, source: checkpoint, architecture: test_resnet, weights: tr.safetensors}
          - {name: feats, source: features, path: f.npz}
          - {name: r, source: recipe, recipe: {objective: init, width: 4, z_dim: 8}}
    """))
    assert run_cli("zoo", "list", "--zoo", str(files / "zoo.yaml"), "--format", "csv") == 0
    from riskdecomp.sources.base import file_sha256

    rows = [line.split(",")[:4] for line in capsys.readouterr().out.splitlines()[1:]]
    assert rows == [["rand", "timm", "test_resnet", "random"],
                    ["ck", "checkpoint", "test_resnet", f"file:{file_sha256(files / 'tr.safetensors')[:12]}"],
                    ["feats", "features", str(files / "f.npz"), "none"],
                    ["r", "recipe", "init/smallcnn", "random"]]
