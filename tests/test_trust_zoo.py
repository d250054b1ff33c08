"""Issue 12 (numbers you can trust), the zoo's share: every bad zoo file or weights file is a one-line error naming
the culprit, and nothing a zoo entry says can make riskdecomp use weights it did not ask for. Table-driven; which
test covers which item of the zoo assignment is said in each test's docstring."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from riskdecomp.utils.errors import ZooError
from riskdecomp.zoo import load_zoo

GOOD_ENTRY = "models:\n  - name: a\n    source: recipe\n    recipe: {objective: init}\n"

# a "billion laughs" inside an entry's metadata: 9 levels of 9 aliases = 9**9 (387 million) strings once expanded
_LEVELS = ["&a [" + ",".join(["lol"] * 9) + "]"] + [f"&{c} [{','.join(['*' + p] * 9)}]" for p, c in
                                                     zip("abcdefgh", "bcdefghi")]
BOMB = ("models:\n  - name: a\n    source: recipe\n    recipe: {objective: init}\n    metadata:\n      notes: [\n"
        + "".join(f"        {lv},\n" for lv in _LEVELS) + "      ]\n")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "riskdecomp.cli", *args], capture_output=True, text=True)


def test_yaml_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    """Item 5 (issue 12 #11): the alias bomb is a one-line error, fast, through the CLI too."""
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB.encode()) < 700
    t0 = time.perf_counter()
    with pytest.raises(ZooError) as info:
        load_zoo(path)
    assert time.perf_counter() - t0 < 2.0
    assert str(path) in str(info.value) and "alias" in str(info.value)
    res = _cli("zoo", "list", "--zoo", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().startswith("riskdecomp: error:") and "alias" in res.stderr


def test_recursive_alias_is_refused(tmp_path):
    """Item 5: an anchor used inside itself (infinite expansion) is an error too."""
    path = tmp_path / "rec.yaml"
    path.write_text("models: &m\n  - name: a\n    source: recipe\n    recipe: {objective: init}\n"
                    "    metadata: {notes: *m}\n")
    with pytest.raises(ZooError, match="recursive alias"):
        load_zoo(path)


def test_ordinary_aliases_still_work(tmp_path):
    """Item 5: sharing a block with an anchor (how users write zoos) is unaffected by the cap."""
    path = tmp_path / "ok.yaml"
    path.write_text("models:\n"
                    "  - name: a\n    source: recipe\n    recipe: &r {objective: simclr, augment: {flip: true}}\n"
                    "  - name: b\n    source: recipe\n    recipe: *r\n")
    zoo = load_zoo(path)
    assert zoo["b"].recipe == zoo["a"].recipe and zoo["b"].recipe.augment.flip


NOT_UTF8 = {
    # name: (file bytes, substring of the error)
    "latin1_comment": ("# modèle préféré\n".encode("latin-1") + GOOD_ENTRY.encode(), "not UTF-8"),
    "utf16": (GOOD_ENTRY.encode("utf-16"), "UTF-16"),
    "binary": (bytes(range(256)) * 4, "binary"),
    "gzip": (b"\x1f\x8b\x08\x00" + bytes(40), "binary"),
}


@pytest.mark.parametrize("kind", sorted(NOT_UTF8))
def test_non_utf8_zoo_file_is_one_line_error_naming_the_file(tmp_path, kind):
    """Item 6: non-UTF-8 zoo files (latin-1 comment, UTF-16, binary) -> one line naming the file, exit 2."""
    data, needle = NOT_UTF8[kind]
    path = tmp_path / f"{kind}.yaml"
    path.write_bytes(data)
    with pytest.raises(ZooError) as info:
        load_zoo(path)
    assert needle in str(info.value) and str(path) in str(info.value)
    res = _cli("zoo", "list", "--zoo", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(path) in res.stderr


def test_utf8_with_bom_and_non_ascii_text_is_fine(tmp_path):
    """Item 6: valid UTF-8 (with a BOM, with accents in a comment) still loads."""
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeff# modèle préféré\n".encode() + GOOD_ENTRY.encode())
    assert load_zoo(path).names == ["a"]


PATHLIKE = {
    # every zoo string that reaches a file or cache path (ours, timm's or torch.hub's): (entry yaml, field)
    "name_traversal": ("{name: ../x, source: recipe, recipe: {objective: init}}", "'name'"),
    "name_slash": ("{name: a/b, source: recipe, recipe: {objective: init}}", "'name'"),
    "timm_model": ("{name: a, source: timm, model: ../../etc/x, pretrained: false}", "'model'"),
    "timm_model_abs": ("{name: a, source: timm, model: /etc/x, pretrained: false}", "'model'"),
    "ckpt_arch": ("{name: a, source: checkpoint, architecture: ../r, weights: w.safetensors}", "'architecture'"),
    "recipe_backbone": ("{name: a, source: recipe, recipe: {objective: init, backbone: ../../x}}",
                        "'recipe.backbone'"),
    "hub_repo": ("{name: a, source: torch_hub, repo: ../../x, entrypoint: e, trust_repo: true}", "'repo'"),
    "hub_entrypoint": ("{name: a, source: torch_hub, repo: a/b, entrypoint: ../e, trust_repo: true}", "'entrypoint'"),
}


@pytest.mark.parametrize("kind", sorted(PATHLIKE))
def test_path_like_zoo_strings_are_validated(tmp_path, kind):
    """Item 6: every string of an entry that can become part of a path is validated like names."""
    body, field = PATHLIKE[kind]
    path = tmp_path / "zoo.yaml"
    path.write_text(f"models:\n  - {body}\n")
    with pytest.raises(ZooError) as info:
        load_zoo(path)
    assert field in str(info.value) and str(path) in str(info.value)


def test_real_model_names_still_validate(tmp_path):
    """Item 6: the names users really write (timm tags, hf-hub ids, hub repos with a ref) are accepted."""
    path = tmp_path / "zoo.yaml"
    path.write_text("models:\n"
                    "  - {name: a, source: timm, model: vit_small_patch16_224.dino, pretrained: true}\n"
                    "  - {name: b, source: timm, model: 'hf-hub:timm/resnet18.a1_in1k', pretrained: true}\n"
                    "  - {name: c, source: torch_hub, repo: 'facebookresearch/swav:main', entrypoint: resnet50,"
                    " trust_repo: true}\n"
                    "  - {name: d, source: recipe, recipe: {objective: init, backbone: resnet18}}\n")
    assert load_zoo(path).names == ["a", "b", "c", "d"]


def test_timm_entry_must_say_which_weights(tmp_path):
    """Item 7 (issue 13 §2): a timm entry with neither pretrained nor weights is a one-line error (it used to
    evaluate a random init silently, even for vit_small_patch16_224.dino); pretrained: false is the explicit way."""
    path = tmp_path / "zoo.yaml"
    path.write_text("models:\n  - {name: dino, source: timm, model: vit_small_patch16_224.dino}\n")
    res = _cli("zoo", "list", "--zoo", str(path))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1 and "'dino'" in err and "'pretrained'" in err
    assert "pretrained: true" in err and "pretrained: false" in err
    path.write_text("models:\n  - {name: dino, source: timm, model: vit_small_patch16_224.dino, pretrained: false,"
                    " weights: w.safetensors}\n")
    with pytest.raises(ZooError, match="contradicts"):
        load_zoo(path)
    path.write_text("models:\n  - {name: dino, source: timm, model: vit_small_patch16_224.dino, pretrained: false}\n")
    assert load_zoo(path)["dino"].pretrained is False


def test_zoo_list_has_a_weights_column_and_fits_120_columns(tmp_path):
    """Item 7: `zoo list` says where each entry's weights come from (hub / file sha / random / recipe) and fits a
    120-column terminal, also for the 58-entry published zoo."""
    import hashlib

    (tmp_path / "w.safetensors").write_bytes(b"not really weights")
    sha = hashlib.sha256(b"not really weights").hexdigest()[:12]
    path = tmp_path / "zoo.yaml"
    path.write_text("models:\n"
                    "  - {name: hubby, source: timm, model: resnet18.a1_in1k, pretrained: true}\n"
                    "  - {name: filed, source: timm, model: resnet18, weights: w.safetensors}\n"
                    "  - {name: rand, source: timm, model: resnet18, pretrained: false}\n"
                    "  - {name: mine, source: recipe, recipe: {objective: simclr}}\n"
                    "  - {name: init, source: recipe, recipe: {objective: init}}\n"
                    "  - {name: ck, source: checkpoint, architecture: resnet18, weights: gone.safetensors}\n")
    frame = load_zoo(path).to_frame()
    assert dict(zip(frame["name"], frame["weights"])) == {
        "hubby": "hub", "filed": f"file:{sha}", "rand": "random", "mine": "recipe", "init": "random",
        "ck": "file:missing"}
    published = Path(__file__).resolve().parents[1] / "zoos" / "published.yaml"
    for zoo in (path, published):
        res = _cli("zoo", "list", "--zoo", str(zoo))
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert max(map(len, lines)) <= 120
        assert lines[0].split()[:4] == ["name", "source", "what", "weights"]
    assert "vit_small_patch16_224.augreg_in1k" in res.stdout  # real tags are not cut


# ------------------------------------------------------------------------------------------ item 1: strict weights


@pytest.fixture(scope="module")
def wfiles(tmp_path_factory):
    """Weights files written by the test (never downloaded): a resnet18 (with classifier, as a real checkpoint
    has), the same with one extra tensor, timm's tiny test_resnet, and a bare smallcnn state dict."""
    import timm
    import torch
    from safetensors.torch import save_file

    from riskdecomp.pretrain.backbones import create_backbone

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    sd = timm.create_model("resnet18", pretrained=False).state_dict()
    save_file(sd, str(d / "r18.safetensors"))
    save_file({**sd, "extra.weight": torch.zeros(3)}, str(d / "r18_extra.safetensors"))
    save_file(timm.create_model("test_resnet", pretrained=False).state_dict(), str(d / "test_resnet.safetensors"))
    save_file(create_backbone("smallcnn", width=4, z_dim=8).state_dict(), str(d / "cnn4.safetensors"))
    return d


def _entry(**kw):
    from riskdecomp.zoo import parse_zoo

    return parse_zoo({"models": [{"name": "victim", **kw}]})["victim"]


MISFITS = {
    # name: (zoo entry fields, substrings of the one-line error); {w} is the weights folder
    "timm_r34_with_r18": ({"source": "timm", "model": "resnet34", "weights": "{w}/r18.safetensors"},
                          ["'victim'", "'resnet34'", "missing layer1.2.", "in all"]),
    "ckpt_r34_with_r18": ({"source": "checkpoint", "architecture": "resnet34", "weights": "{w}/r18.safetensors"},
                          ["'victim'", "'resnet34'", "missing layer1.2."]),
    "timm_extra_tensor": ({"source": "timm", "model": "resnet18", "weights": "{w}/r18_extra.safetensors"},
                          ["'victim'", "unexpected extra.weight"]),
    "ckpt_extra_tensor": ({"source": "checkpoint", "architecture": "resnet18", "weights": "{w}/r18_extra.safetensors"},
                          ["'victim'", "unexpected extra.weight"]),
    "timm_shape": ({"source": "timm", "model": "resnet18", "weights": "{w}/test_resnet.safetensors"},
                   ["'victim'", "shape mismatch: ", "tensors differ"]),
    "smallcnn_width": ({"source": "checkpoint", "architecture": "smallcnn", "weights": "{w}/cnn4.safetensors",
                        "model_kwargs": {"width": 8, "z_dim": 8}}, ["'victim'", "shape mismatch"]),
    "smallcnn_for_resnet": ({"source": "checkpoint", "architecture": "resnet18", "weights": "{w}/cnn4.safetensors",
                             "strict": False}, ["'victim'", "no tensor of the file"]),
    # hub weights (pretrained: true) are loaded by timm strictly too; pretrained_cfg_overlay points the "hub" at a
    # local file, so this runs offline
    "hub_r34_with_r18": ({"source": "timm", "model": "resnet34", "pretrained": True,
                          "model_kwargs": {"pretrained_cfg_overlay": {"file": "{w}/r18.safetensors"}}},
                         ["'victim'", "'resnet34'", "Missing key"]),
}


def _fill(v, w):
    if isinstance(v, str):
        return v.replace("{w}", str(w))
    if isinstance(v, dict):
        return {k: _fill(x, w) for k, x in v.items()}
    return v


@pytest.mark.parametrize("case", sorted(MISFITS))
def test_weights_that_do_not_fit_are_a_one_line_error(wfiles, case):
    """Item 1 (issue 12 #2): missing / unexpected keys or shape mismatches are an error naming the entry and the
    first keys, on every load path (timm weights file, hub weights, checkpoint entries, own backbones)."""
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.utils.errors import WeightsError

    fields, needles = MISFITS[case]
    with pytest.raises(WeightsError) as info:
        build_encoder(_entry(**_fill(fields, wfiles)))
    msg = str(info.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


def test_strict_false_loads_the_matching_tensors_and_lists_the_rest(wfiles):
    """Item 1: ``strict: false`` is the opt-in; Encoder.ignored_keys lists what stayed random / was dropped."""
    import timm
    import torch
    from safetensors.torch import load_file

    from riskdecomp.features.encoders import build_encoder

    enc = build_encoder(_entry(source="timm", model="resnet34", weights=str(wfiles / "r18.safetensors"),
                               strict=False))
    missing, unexpected = enc.ignored_keys["missing"], enc.ignored_keys["unexpected"]
    own = enc.module.model.state_dict()
    assert len(own) == 216 and len(missing) == 96 and unexpected == []  # the numbers
    file = load_file(str(wfiles / "r18.safetensors"))
    assert all(torch.equal(own[k], file[k]) for k in own if k not in missing)
    assert all(k.startswith(("layer1.2", "layer2.2", "layer2.3", "layer3.", "layer4.2")) for k in missing)
    # the same file loads strictly into its own architecture, nothing ignored
    ok = build_encoder(_entry(source="timm", model="resnet18", weights=str(wfiles / "r18.safetensors")))
    assert ok.ignored_keys == {"missing": [], "unexpected": []}
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    ref.load_state_dict({k: v for k, v in file.items() if not k.startswith("fc.")})
    assert all(torch.equal(a, b) for a, b in zip(ok.module.model.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ZooError, match="strict: false applies to a weights"):
        _entry(source="timm", model="resnet18", pretrained=True, strict=False)


def test_cli_featurize_refuses_weights_of_another_architecture(wfiles, tmp_path):
    """Item 1 through the CLI: `featurize` of a resnet34 entry with resnet18 weights exits 2 with one line."""
    from test_datasets import make_folder

    root = make_folder(tmp_path / "imgs", n_train=2, n_test=1, size=16)
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(f"models:\n  - {{name: rn34, source: timm, model: resnet34, weights: {wfiles}/r18.safetensors}}\n")
    res = _cli("featurize", "--zoo", str(zoo), "--dataset", f"imagefolder:{root}", "--cache-dir",
               str(tmp_path / "cache"), "--no-progress")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and "'rn34'" in res.stderr and "missing layer1.2." in res.stderr
    assert not list((tmp_path / "cache").rglob("*.npy"))


# ------------------------------------------------------------------------------------------ item 8: input size


@pytest.fixture(scope="module")
def px32(tmp_path_factory):
    """An image folder of 32 px images (CIFAR-sized)."""
    from test_datasets import make_folder

    from riskdecomp.features.datasets import load_dataset

    root = make_folder(tmp_path_factory.mktemp("px32") / "d", n_train=2, n_test=1, size=32)
    return load_dataset(f"imagefolder:{root}")


def test_encoder_reports_its_input_size_and_upscaling(px32, wfiles):
    """Item 8 (issue 13 §2): a 32 px dataset fed to a 224 px model is upscaled -- the Encoder says so
    (input_size, upscaled); `image_size:` feeds the model at the size asked for, and changes the cache identity."""
    from riskdecomp.features.encoders import build_encoder

    default = build_encoder(_entry(source="timm", model="resnet18", weights=str(wfiles / "r18.safetensors")),
                            dataset=px32)
    assert default.input_size == 224 and default.upscaled is True
    assert default.transform(px32.train.load_image(0)).shape == (3, 224, 224)
    small = build_encoder(_entry(source="timm", model="resnet18", weights=str(wfiles / "r18.safetensors"),
                                 image_size=32), dataset=px32)
    assert small.input_size == 32 and small.upscaled is False
    assert small.transform(px32.train.load_image(0)).shape == (3, 32, 32)
    assert small.identity != default.identity and small.weights_sha256 == default.weights_sha256
    ck = build_encoder(_entry(source="checkpoint", architecture="smallcnn", weights=str(wfiles / "cnn4.safetensors"),
                              model_kwargs={"width": 4, "z_dim": 8}, image_size=64), dataset=px32)
    assert ck.input_size == 64 and ck.upscaled is True
    assert ck.transform(px32.train.load_image(0)).shape == (3, 64, 64)
    assert build_encoder(_entry(source="recipe", recipe={"objective": "init", "width": 4, "z_dim": 8}),
                         dataset=px32, cache_dir=wfiles / "cache").input_size == 32


def test_vit_weights_load_at_another_image_size(px32, tmp_path):
    """Item 8: a ViT's weights saved at its native size load into `image_size: 32` (position embeddings resampled
    by the architecture's own checkpoint filter, as timm does for hub weights), and featurize gives finite features
    of the right width from 32 px input."""
    import numpy as np
    import timm
    import torch
    from safetensors.torch import save_file

    from riskdecomp.features.cache import featurize
    from riskdecomp.features.encoders import build_encoder

    torch.manual_seed(0)
    native = timm.create_model("test_vit", pretrained=False)
    save_file(native.state_dict(), str(tmp_path / "vit.safetensors"))
    e = _entry(source="timm", model="test_vit", weights=str(tmp_path / "vit.safetensors"), image_size=32,
               representation="cls")
    enc = build_encoder(e, dataset=px32)
    assert enc.input_size == 32 and enc.upscaled is False
    own = enc.module.model.state_dict()
    assert own["pos_embed"].shape[1] == native.state_dict()["pos_embed"].shape[1] - 100 + 4  # 10x10 -> 2x2 patches
    assert torch.equal(own["blocks.0.attn.qkv.weight"], native.state_dict()["blocks.0.attn.qkv.weight"])
    f = featurize(e, px32, cache_dir=tmp_path / "cache", device="cpu", progress=False)
    assert f.x_train.shape == (4, native.num_features) and np.isfinite(f.x_train).all()
    with pytest.raises(Exception, match="disagree"):
        build_encoder(_entry(source="timm", model="test_vit", pretrained=False, image_size=32,
                             model_kwargs={"img_size": 64}))


def test_hub_weights_load_strictly_and_completely(wfiles):
    """Item 1, hub path (`pretrained: true`): timm loads the weights with its strict check (classifier included),
    then the classifier is removed -- every tensor of the encoder is the file's. Offline: the "hub" is a local file
    through timm's pretrained_cfg_overlay."""
    import torch
    from safetensors.torch import load_file

    from riskdecomp.features.encoders import build_encoder

    enc = build_encoder(_entry(source="timm", model="resnet18", pretrained=True,
                               model_kwargs={"pretrained_cfg_overlay": {"file": str(wfiles / "r18.safetensors")}}))
    file = load_file(str(wfiles / "r18.safetensors"))
    own = enc.module.model.state_dict()
    assert set(own) == {k for k in file if not k.startswith("fc.")}
    assert all(torch.equal(v, file[k]) for k, v in own.items())
    with torch.inference_mode():
        assert enc.module(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
