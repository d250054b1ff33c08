"""What identifies an encoder's features (issue 24, classes 2 and 4), through the CLI.

Class 2: a random initialization is a function of its cache key -- every build runs under the entry's ``init_seed``
(part of the key where the build can leave random weights), so two fresh caches hold the same bytes, a reused cache
gives a cold run's numbers, and a job's augmented views come from the network that made its features.
Class 4: every file the loader may read is hashed into the key (a Hugging Face folder's ``processor_config.json`` and
``model.safetensors.index.json``, a riskdecomp checkpoint's sidecar): editing one recomputes, never reuses."""

import json
import textwrap

import numpy as np
import pytest
import torch
from zoo_factory import FAST, run_cli

RANDOM_TIMM = "{name: rnd, source: timm, model: test_vit, pretrained: false, image_size: 32%s}"
VIEWS = ["--no-uncertainty", "--statistics", "--aug-views", "2", "--no-active", "--jobs", "1"]


def _zoo(tmp_path, *entries):
    p = tmp_path / "zoo.yaml"
    p.write_text("models:\n" + "".join(f"  - {e}\n" for e in entries))
    return p


def _featurize(zoo, cache, capsys=None):
    assert run_cli("featurize", "--zoo", str(zoo), "--dataset", "digits", "--cache-dir", str(cache),
                   "--no-progress") == 0
    return capsys.readouterr().out if capsys is not None else None


def _feature_files(cache, model):
    return {p.name: p.read_bytes() for p in sorted((cache / "features" / model).glob("*.npy"))}


def _evaluate(zoo, out, cache, *extra):
    assert run_cli("evaluate", "--zoo", str(zoo), "--dataset", "digits", "--out", str(out), "--cache-dir",
                   str(cache), *FAST, *extra) == 0
    (path,) = (out / "runs").glob("*@*.json")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ class 2
def test_featurize_of_a_random_init_into_two_fresh_caches_writes_the_same_bytes(tmp_path):
    zoo = _zoo(tmp_path, RANDOM_TIMM % "")
    _featurize(zoo, tmp_path / "c1")
    torch.rand(7)  # whatever ran before in the process does not make another network
    _featurize(zoo, tmp_path / "c2")
    a, b = _feature_files(tmp_path / "c1", "rnd"), _feature_files(tmp_path / "c2", "rnd")
    assert len(a) == 2 and a.keys() == b.keys()
    assert all(a[k] == b[k] for k in a)


def test_evaluate_reusing_featurized_random_init_gives_the_cold_runs_numbers(tmp_path):
    zoo = _zoo(tmp_path, RANDOM_TIMM % "")
    _featurize(zoo, tmp_path / "c1")
    reused = _evaluate(zoo, tmp_path / "o1", tmp_path / "c1", "--no-uncertainty", "--no-statistics", "--no-active")
    cold = _evaluate(zoo, tmp_path / "o2", tmp_path / "c2", "--no-uncertainty", "--no-statistics", "--no-active")
    assert reused["run_key"] == cold["run_key"]
    assert reused["row"]["agg_risk"] == cold["row"]["agg_risk"]
    assert reused["row"] == cold["row"]


def test_a_jobs_augmented_views_come_from_the_network_of_its_features(tmp_path):
    """A cold job (features computed) and a warm one (features from the cache, the encoder built for the views
    only) give the same view statistics: one network, however many times it is built."""
    zoo = _zoo(tmp_path, RANDOM_TIMM % "")
    cold = _evaluate(zoo, tmp_path / "o1", tmp_path / "c", *VIEWS)
    warm = _evaluate(zoo, tmp_path / "o2", tmp_path / "c", *VIEWS)
    assert np.isfinite(cold["row"]["testaug_nc1"])
    assert cold["row"]["testaug_nc1"] == warm["row"]["testaug_nc1"]
    assert cold["row"] == warm["row"]


def test_the_init_seed_makes_the_network_and_is_part_of_the_keys(tmp_path, capsys):
    zoo = _zoo(tmp_path, RANDOM_TIMM % "", (RANDOM_TIMM % ", init_seed: 0").replace("rnd", "same"),
               (RANDOM_TIMM % ", init_seed: 1").replace("rnd", "other"))
    _featurize(zoo, tmp_path / "c")
    rnd, same, other = (_feature_files(tmp_path / "c", m) for m in ("rnd", "same", "other"))
    keys = [{k.rsplit("-", 1)[1] for k in files} for files in (rnd, same, other)]
    assert keys[0] == keys[1] and not keys[0] & keys[2]  # the default seed is 0; seed 1 is another key
    assert list(rnd.values()) == list(same.values()) and list(rnd.values()) != list(other.values())
    # the run key too: a record of seed 0 is not reused for seed 1
    first = _evaluate(_zoo(tmp_path, RANDOM_TIMM % ""), tmp_path / "o", tmp_path / "c", "--no-uncertainty",
                      "--no-statistics", "--no-active")
    second = _evaluate(_zoo(tmp_path, RANDOM_TIMM % ", init_seed: 1"), tmp_path / "o", tmp_path / "c",
                       "--no-uncertainty", "--no-statistics", "--no-active")
    assert first["run_key"] != second["run_key"] and first["row"]["agg_risk"] != second["row"]["agg_risk"]


def test_a_huggingface_model_with_tensors_left_random_is_the_same_network_in_two_caches(tmp_path):
    """``strict: false``: transformers initializes the pooler the folder lacks; the init seed makes it."""
    transformers = pytest.importorskip("transformers")
    _save_vit(transformers, tmp_path / "vit")
    zoo = _zoo(tmp_path, "{name: hf, source: huggingface, path: vit, representation: pooled, strict: false}")
    _featurize(zoo, tmp_path / "c1")
    torch.rand(7)
    _featurize(zoo, tmp_path / "c2")
    a, b = _feature_files(tmp_path / "c1", "hf"), _feature_files(tmp_path / "c2", "hf")
    assert len(a) == 2 and a == b


# ------------------------------------------------------------------------------------------------ class 4
def _save_vit(transformers, folder, shard=None):
    """A tiny ViT (32 px) as ``save_pretrained`` writes it (``shard``: in shards of at most that size, with
    ``model.safetensors.index.json``), with its preprocessing."""
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32)
    model = transformers.ViTModel(cfg, add_pooling_layer=False)
    model.save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)


def _features(cache, model):
    from riskdecomp.features.cache import read_cached

    path = max((cache / "features" / model).glob("*-test-*.npy"), key=lambda p: p.stat().st_mtime_ns)  # the latest
    return np.asarray(read_cached(path), dtype=np.float32)


def test_editing_processor_config_json_recomputes_features_and_runs(tmp_path, capsys):
    """transformers reads ``processor_config.json``'s nested ``image_processor`` before
    ``preprocessor_config.json``: a new normalization there is new features, so a new key."""
    transformers = pytest.importorskip("transformers")
    _save_vit(transformers, tmp_path / "vit")
    zoo = _zoo(tmp_path, "{name: hf, source: huggingface, path: vit, representation: cls}")
    assert "computed" in _featurize(zoo, tmp_path / "c", capsys)
    before = _features(tmp_path / "c", "hf")
    rec1 = _evaluate(zoo, tmp_path / "o", tmp_path / "c", "--no-uncertainty", "--no-statistics", "--no-active")
    proc = json.loads((tmp_path / "vit" / "preprocessor_config.json").read_text())
    proc.update(image_mean=[0.2, 0.3, 0.4], image_std=[0.1, 0.1, 0.1])
    (tmp_path / "vit" / "processor_config.json").write_text(json.dumps({"image_processor": proc}))
    assert "hf: train (1257, 16), test (540, 16), computed" in _featurize(zoo, tmp_path / "c", capsys)
    after = _features(tmp_path / "c", "hf")
    assert np.abs(after - before).max() > 0.1  # the loader did read it: the features changed
    rec2 = _evaluate(zoo, tmp_path / "o", tmp_path / "c", "--no-uncertainty", "--no-statistics", "--no-active")
    assert rec2["run_key"] != rec1["run_key"] and rec2["row"]["agg_risk"] != rec1["row"]["agg_risk"]


def test_editing_the_safetensors_index_recomputes_features(tmp_path, capsys):
    """Sharded weights: the index says which shard holds each tensor. Pointing it at another shard file (present,
    unchanged, from the start) loads other weights: another key."""
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "vit"
    _save_vit(transformers, folder, shard="20KB")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    alt = {k: v + 0.5 for k, v in load_file(str(folder / shard)).items()}
    save_file(alt, str(folder / "alt.safetensors"), metadata={"format": "pt"})
    zoo = _zoo(tmp_path, "{name: hf, source: huggingface, path: vit, representation: cls}")
    assert "computed" in _featurize(zoo, tmp_path / "c", capsys)
    before = _features(tmp_path / "c", "hf")
    index["weight_map"] = {k: "alt.safetensors" if v == shard else v for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert "hf: train (1257, 16), test (540, 16), computed" in _featurize(zoo, tmp_path / "c", capsys)
    assert np.abs(_features(tmp_path / "c", "hf") - before).max() > 0.1


def test_a_readme_in_the_model_folder_changes_nothing(tmp_path, capsys):
    """Documentation is the one thing the rule leaves out: editing it reuses the cache."""
    transformers = pytest.importorskip("transformers")
    _save_vit(transformers, tmp_path / "vit")
    zoo = _zoo(tmp_path, "{name: hf, source: huggingface, path: vit, representation: cls}")
    _featurize(zoo, tmp_path / "c", capsys)
    (tmp_path / "vit" / "README.md").write_text("# a tiny ViT\n")
    assert "hf: train (1257, 16), test (540, 16), cached" in _featurize(zoo, tmp_path / "c", capsys)


def test_editing_a_checkpoints_sidecar_recomputes_features_and_runs(tmp_path, capsys):
    """``source: checkpoint`` of a riskdecomp-pretrained file reads its sidecar (normalization, input size): the
    sidecar's bytes are part of the key, not only the weights'."""
    from riskdecomp.features.datasets import load_dataset
    from riskdecomp.pretrain import Recipe, pretrain, save_checkpoint

    r = Recipe(objective="init", width=4, z_dim=8, image_size=16)
    enc, hist = pretrain(r, load_dataset("digits").train, progress=False)
    save_checkpoint(tmp_path / "enc.safetensors", enc, r, hist)
    zoo = _zoo(tmp_path, "{name: ck, source: checkpoint, architecture: smallcnn, weights: enc.safetensors}")
    assert "computed" in _featurize(zoo, tmp_path / "c", capsys)
    before = _features(tmp_path / "c", "ck")
    rec1 = _evaluate(zoo, tmp_path / "o", tmp_path / "c", "--no-uncertainty", "--no-statistics", "--no-active")
    side = tmp_path / "enc.safetensors.json"
    meta = json.loads(side.read_text())
    meta["normalization"] = {"mean": [0.1, 0.1, 0.1], "std": [0.2, 0.2, 0.2]}
    side.write_text(json.dumps(meta))
    assert "ck: train (1257, 8), test (540, 8), computed" in _featurize(zoo, tmp_path / "c", capsys)
    assert np.abs(_features(tmp_path / "c", "ck") - before).max() > 1e-3
    rec2 = _evaluate(zoo, tmp_path / "o", tmp_path / "c", "--no-uncertainty", "--no-statistics", "--no-active")
    assert rec2["run_key"] != rec1["run_key"]


def test_a_torch_hub_entry_is_keyed_by_its_repositorys_code_and_seeded(tmp_path, monkeypatch, capsys):
    """torch.hub runs ``hubconf.py`` and the modules it imports from the cached repository: their bytes are part
    of the key (an edited module recomputes), and what the entrypoint initializes at random is the init seed's
    (two fresh caches: the same bytes)."""
    import sys

    repo = tmp_path / "torch" / "hub" / "acme_tiny_v1"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text("dependencies = ['torch']\nfrom tinynet import make\n\n\n"
                                     "def tiny():\n    return make()\n")
    net = "import torch.nn as nn\n\n\ndef make():\n    return nn.Sequential(nn.AdaptiveAvgPool2d(%d), nn.Flatten(), " \
          "nn.Linear(%d, 8))\n"
    (repo / "tinynet.py").write_text(net % (2, 12))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delitem(sys.modules, "tinynet", raising=False)
    zoo = _zoo(tmp_path, "{name: th, source: torch_hub, repo: 'acme/tiny:v1', entrypoint: tiny, trust_repo: true}")
    assert "th: train (1257, 8), test (540, 8), computed" in _featurize(zoo, tmp_path / "c1", capsys)
    torch.rand(7)
    _featurize(zoo, tmp_path / "c2")
    a, b = _feature_files(tmp_path / "c1", "th"), _feature_files(tmp_path / "c2", "th")
    assert len(a) == 2 and a == b
    assert "th: train (1257, 8), test (540, 8), cached" in _featurize(zoo, tmp_path / "c1", capsys)
    (repo / "tinynet.py").write_text(net % (1, 3))
    monkeypatch.delitem(sys.modules, "tinynet", raising=False)
    assert "th: train (1257, 8), test (540, 8), computed" in _featurize(zoo, tmp_path / "c1", capsys)
    assert len(_feature_files(tmp_path / "c1", "th")) == 4  # a new key beside the old one
