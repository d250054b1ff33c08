"""The default zoo (model_zoo.yaml): valid, controlled comparisons, equal to its explicit form."""

from pathlib import Path

import pytest
import yaml

from riskdecomp.cli import main
from riskdecomp.zoo import load_zoo

ZOO = Path(__file__).resolve().parents[1] / "model_zoo.yaml"
EXPLICIT = Path(__file__).resolve().parent / "data" / "model_zoo_explicit.yaml"
SSL = {"simclr", "byol", "simsiam", "vicreg", "barlow_twins", "stochastic"}


@pytest.fixture(scope="module")
def zoo():
    return load_zoo(ZOO)


def _flat(recipe) -> dict:
    d = recipe.model_dump(mode="json")
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            out[k] = v
    return out


def _diff(a, b) -> set:
    fa, fb = _flat(a.recipe), _flat(b.recipe)
    return {k for k in fa if fa[k] != fb[k]}


def test_loads_with_enough_recipe_entries(zoo):
    recipes = [e for e in zoo if e.source == "recipe"]
    assert len(recipes) >= 12
    assert {"supervised", "init"} <= set(zoo.names)
    assert {e.recipe.objective for e in recipes} >= SSL | {"supervised", "init"}
    assert all(e.representation == "pooled" for e in zoo)
    assert len({e.recipe.key() for e in recipes}) == len(recipes)  # no two entries share a checkpoint


def test_every_ssl_entry_references_supervised(zoo):
    for e in zoo:
        if e.recipe.objective in SSL:
            assert e.reference == "supervised", e.name
        else:
            assert e.reference is None, e.name


def test_objectives_differ_only_in_objective(zoo):
    base = zoo["simclr"]
    for name in ("byol", "simsiam", "vicreg", "barlow_twins", "stochastic"):
        assert _diff(base, zoo[name]) == {"objective"}, name


@pytest.mark.parametrize("name, field", [
    ("simclr_z16", "z_dim"), ("simclr_z32", "z_dim"), ("simclr_ep5", "epochs"), ("simclr_ep20", "epochs"),
    ("simclr_head_none", "head.kind"), ("simclr_aug_crop", None), ("simclr_bs64", "batch_size"),
])
def test_simclr_sweeps_change_one_setting(zoo, name, field):
    d = _diff(zoo["simclr"], zoo[name])
    if field is None:  # augmentation set: only augment.* switches change
        assert d and all(k.startswith("augment.") for k in d)
        assert zoo[name].recipe.augment.crop and not zoo[name].recipe.augment.color_jitter
    else:
        assert d == {field}
    lin = _diff(zoo["simclr"], zoo["simclr_head_linear"])
    assert lin <= {"head.kind", "head.depth", "head.width", "head.out_dim"} and "head.kind" in lin


def test_compact_zoo_expands_to_the_explicit_form(capsys):
    """model_zoo.yaml (defaults / base / sweep, metadata derived from the recipes) gives exactly the entries of its
    former explicit form (tests/data/model_zoo_explicit.yaml: every recipe and all metadata written by hand)."""
    capsys.readouterr()
    main(["zoo", "list", "--zoo", str(ZOO), "--expanded"])
    compact = {e["name"]: e for e in yaml.safe_load(capsys.readouterr().out)["models"]}
    main(["zoo", "list", "--zoo", str(EXPLICIT), "--expanded"])
    explicit = {e["name"]: e for e in yaml.safe_load(capsys.readouterr().out)["models"]}
    assert len(compact) == len(explicit) == 16
    for name, e in explicit.items():
        assert compact[name] == e, name
    assert ZOO.read_text().count("\n") < 40  # a screenful
