"""zoos/published.yaml: real pretrained SSL encoders (and their supervised references) that users can run online.

Everything here is offline: the socket layer is blocked for every test, timm architectures are built with
``pretrained=False`` on the meta device (no memory, no weights), and torch.hub entries are only checked against the
entry points their repositories' ``hubconf.py`` define.
"""

from __future__ import annotations

import functools
import re
import socket
from pathlib import Path

import pytest

from riskdecomp.zoo import load_zoo

ZOO_PATH = Path(__file__).resolve().parents[1] / "zoos" / "published.yaml"

REQUIRED = ("objective", "ssl_mode", "architecture", "family", "pretraining_data", "year")
SSL_MODES = {"clustering", "hierarchical", "contrastive", "siamese", "generative", "transform"}
# representation -> width multiplier of the feature vector (cls+avg concatenates 2 tokens, 4xcls 4 CLS tokens)
WIDTH = {"pooled": 1, "cls": 1, "avg": 1, "cls+avg": 2, "4xcls": 4}
TOKEN_REPS = {"cls", "cls+avg", "4xcls"}

# Entry points defined by each repository's hubconf.py (main branch).
HUB_ENTRYPOINTS = {
    "facebookresearch/dino": {"dino_vits16", "dino_vits8", "dino_vitb16", "dino_vitb8", "dino_resnet50",
                              "dino_xcit_small_12_p16", "dino_xcit_small_12_p8", "dino_xcit_medium_24_p16",
                              "dino_xcit_medium_24_p8"},
    "facebookresearch/swav": {"resnet50", "resnet50w2", "resnet50w4", "resnet50w5"},
    "facebookresearch/barlowtwins": {"resnet50"},
    "facebookresearch/vicreg": {"resnet50", "resnet50w2", "resnet200w2"},
    "facebookresearch/dinov2": {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinov2_vitg14"},
}


class NetworkUsed(RuntimeError):
    pass


def _refuse(*args, **kwargs):
    raise NetworkUsed(f"network access attempted during an offline test: {args[:2]!r}")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any attempt to resolve a host or open a connection raises."""
    monkeypatch.setattr(socket.socket, "connect", _refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse)
    monkeypatch.setattr(socket, "create_connection", _refuse)
    monkeypatch.setattr(socket, "getaddrinfo", _refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def zoo():
    return load_zoo(ZOO_PATH)


def _entries(source=None):
    return [e for e in load_zoo(ZOO_PATH) if source is None or e.source == source]


def _is_supervised(entry) -> bool:
    return entry.metadata.get("ssl_mode") == "supervised"


@functools.lru_cache(maxsize=None)
def _timm_pretrained() -> frozenset:
    import timm

    return frozenset(timm.list_pretrained())


@functools.lru_cache(maxsize=None)
def _meta_model_facts(arch: str) -> dict:
    """Build ``arch`` without weights on the meta device and return what the zoo claims about it."""
    import timm
    import torch

    with torch.device("meta"):
        try:  # ViTs can skip weight init (slow on meta tensors); shapes are the same either way
            model = timm.create_model(arch, pretrained=False, num_classes=0, weight_init="skip")
        except TypeError:
            model = timm.create_model(arch, pretrained=False, num_classes=0)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    return {
        "num_features": model.num_features,
        "has_cls": getattr(model, "cls_token", None) is not None,
        "n_blocks": len(getattr(model, "blocks", ())),
        "patch_size": patch[0] if isinstance(patch, (tuple, list)) else patch,
    }


def test_network_is_blocked_in_these_tests():
    with pytest.raises(NetworkUsed):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(NetworkUsed):
        socket.socket().connect(("127.0.0.1", 9))


def test_loads_offline_with_enough_published_ssl_models(zoo):
    assert len(zoo) >= 30
    ssl = [e for e in zoo if not _is_supervised(e)]
    assert len(ssl) >= 30, f"only {len(ssl)} SSL entries"
    assert {e.source for e in zoo} <= {"timm", "torch_hub"}, "published zoo must only hold downloadable models"
    assert len(set(zoo.names)) == len(zoo)
    # a spread of objectives, not 30 copies of one method
    assert len({e.metadata["objective"] for e in ssl}) >= 10


@pytest.mark.parametrize("entry", _entries(), ids=lambda e: e.name)
def test_every_entry_has_the_core_metadata(entry):
    md = entry.metadata
    missing = [f for f in REQUIRED if md.get(f) in (None, "")]
    assert not missing, f"{entry.name}: missing metadata {missing}"
    assert md["ssl_mode"] in SSL_MODES | {"supervised"}
    assert (md["objective"] == "supervised") == (md["ssl_mode"] == "supervised")
    assert isinstance(md["year"], int) and 2012 <= md["year"] <= 2026
    assert md["family"] in {"resnet", "vit", "convnext"}
    assert md["architecture"].startswith({"resnet": "resnet", "vit": "vit", "convnext": "convnext"}[md["family"]])
    # ViTs state their patch size (the study keeps size and patch separate); CNNs have none
    assert ("patch_size" in md) == (md["family"] == "vit"), entry.name
    assert isinstance(md.get("z_dim"), int) and md["z_dim"] > 0
    if "month" in md:
        assert 1 <= md["month"] <= 12
    for flag in ("is_industry", "is_official"):
        assert isinstance(md.get(flag), bool), f"{entry.name}: {flag} must be a bool"


@pytest.mark.parametrize("entry", _entries("timm"), ids=lambda e: e.name)
def test_timm_entry_is_an_existing_pretrained_tag(entry):
    assert entry.pretrained is True and entry.weights is None
    assert "." in entry.model, f"{entry.name}: give the exact pretrained tag (arch.tag), not just {entry.model!r}"
    assert entry.model in _timm_pretrained(), f"{entry.name}: {entry.model!r} is not a timm pretrained tag"


@pytest.mark.parametrize("entry", _entries("timm"), ids=lambda e: e.name)
def test_timm_architecture_builds_on_meta_and_gives_z_dim(entry):
    facts = _meta_model_facts(entry.model.split(".")[0])
    md = entry.metadata
    assert facts["num_features"] * WIDTH[entry.representation] == md["z_dim"], (
        f"{entry.name}: {entry.representation} of a {facts['num_features']}-wide model is "
        f"{facts['num_features'] * WIDTH[entry.representation]}-d, metadata says {md['z_dim']}")
    if entry.representation in TOKEN_REPS:
        assert facts["has_cls"], f"{entry.name}: {entry.model} has no CLS token, use representation 'pooled'"
    if entry.representation == "4xcls":
        assert facts["n_blocks"] >= 4
    if md["family"] == "vit" and facts["patch_size"] is not None:
        assert facts["patch_size"] == md["patch_size"], entry.name


def test_references_are_matching_supervised_entries(zoo):
    sup = [e for e in zoo if _is_supervised(e)]
    key = lambda e: (e.metadata["architecture"], e.metadata.get("patch_size"), e.metadata["z_dim"])  # noqa: E731
    sup_keys = {key(e) for e in sup}
    n_refs = 0
    for e in zoo:
        if _is_supervised(e):
            assert e.reference is None, f"{e.name}: a supervised reference has no reference itself"
            continue
        if e.reference is None:
            # a reference is given wherever one with the same architecture, patch and width exists
            assert key(e) not in sup_keys, f"{e.name}: a matching supervised entry exists, set reference"
            continue
        ref = zoo[e.reference]
        n_refs += 1
        assert _is_supervised(ref), f"{e.name}: reference {ref.name} is not supervised"
        assert key(ref) == key(e), f"{e.name} {key(e)} vs reference {ref.name} {key(ref)}"
    assert n_refs >= 20
    # every supervised entry is used by someone
    used = {e.reference for e in zoo if e.reference}
    assert {e.name for e in sup} <= used, f"unused references: {sorted({e.name for e in sup} - used)}"


@pytest.mark.parametrize("entry", _entries("torch_hub"), ids=lambda e: e.name)
def test_torch_hub_entries_are_trusted_known_entrypoints(entry):
    assert entry.trust_repo is True
    m = re.fullmatch(r"([\w.-]+/[\w.-]+):([\w.-]+)", entry.repo)
    assert m, f"{entry.name}: repo must be owner/name:ref, got {entry.repo!r}"
    assert m.group(1) in HUB_ENTRYPOINTS, f"{entry.name}: unknown hub repo {m.group(1)}"
    assert entry.entrypoint in HUB_ENTRYPOINTS[m.group(1)], f"{entry.name}: {entry.entrypoint} not in hubconf.py"
    assert entry.representation == "pooled"


def test_models_of_the_published_table_keep_its_values(zoo, shared_dir):
    """An entry named like a model of the published table is that model: same design choices and representation."""
    import pandas as pd

    table = pd.read_csv(shared_dir / "reference" / "ssl-risk-decomposition" / "all_results.csv", header=[0, 1],
                        index_col=0)
    table.columns = table.columns.get_level_values(1)
    fields = ("objective", "ssl_mode", "architecture", "family", "z_dim", "epochs", "batch_size", "pretraining_data",
              "year", "is_industry", "is_official")
    joined = [e for e in zoo if e.name in table.index]
    assert len(joined) >= 20, f"only {len(joined)} entries share a name with the published table"
    for e in joined:
        row = table.loc[e.name]
        for f in fields:
            want = row[f]
            want = want.item() if hasattr(want, "item") else want
            assert e.metadata.get(f) == want, f"{e.name}.{f}: zoo {e.metadata.get(f)!r} vs table {want!r}"
        if e.metadata["family"] == "vit":
            assert e.metadata["patch_size"] == row["patch_size"], e.name


def test_cli_lists_the_published_zoo():
    cli_mod = pytest.importorskip("riskdecomp.cli", reason="the CLI is not written yet")
    from click.testing import CliRunner

    group = getattr(cli_mod, "cli", None) or getattr(cli_mod, "main")
    result = CliRunner().invoke(group, ["zoo", "list", "--zoo", str(ZOO_PATH)])
    assert result.exit_code == 0, result.output
    for name in ("dino_vits16", "dinov2_vitb14_reg4", "vicreg_rn50", "sup_rn50"):
        assert name in result.output
