"""The default zoo (model_zoo.yaml): valid, controlled comparisons, equal to its explicit form."""

from pathlib import Path

import pytest
import yaml

from riskdecomp.cli import main
from riskdecomp.utils.names import split_seed
from riskdecomp.zoo import Zoo, load_zoo

ZOO = Path(__file__).resolve().parents[1] / "model_zoo.yaml"
EXPLICIT = Path(__file__).resolve().parent / "data" / "model_zoo_explicit.yaml"
SSL = {"simclr", "byol", "simsiam", "vicreg", "barlow_twins", "stochastic"}


@pytest.fixture(scope="module")
def expanded():
    return load_zoo(ZOO)


@pytest.fixture(scope="module")
def zoo(expanded):
    """One entry per model (its first pretraining seed), under the model's name."""
    first = {}
    for e in expanded:
        base, _ = split_seed(e.name)
        first.setdefault(base, e.model_copy(update={"name": base,
                                                    "reference": e.reference and split_seed(e.reference)[0]}))
    return Zoo(list(first.values()), ZOO)


def test_every_recipe_has_three_pretraining_seeds_differing_only_in_seed(expanded):
    groups = {}
    for e in expanded:
        base, seed = split_seed(e.name)
        assert seed is not None and e.recipe.seed == seed, e.name
        groups.setdefault(base, []).append(e)
    for base, entries in groups.items():
        assert len(entries) >= 3, base
        assert all(_diff(entries[0], e) == set() and e.metadata == entries[0].metadata for e in entries), base
        for e in entries:  # each seed's reference is the same seed of the reference model
            assert e.reference is None or split_seed(e.reference)[1] == e.recipe.seed, e.name


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
    return {k for k in fa if fa[k] != fb[k]} - {"seed"}


def test_loads_with_enough_recipe_entries(zoo):
    recipes = [e for e in zoo if e.source == "recipe"]
    assert len(recipes) >= 12
    assert {"supervised", "init"} <= set(zoo.names)
    assert {e.recipe.objective for e in recipes} >= SSL | {"supervised", "init"}
    assert all(e.representation == "pooled" for e in zoo)
    assert len({e.recipe.key() for e in recipes}) == len(recipes)  # no two entries share a checkpoint


def test_every_entry_but_supervised_references_supervised(zoo):
    for e in zoo:  # random init too: its approx is the reference's, like every other model's
        assert e.reference == (None if e.recipe.objective == "supervised" else "supervised"), e.name


def test_objectives_differ_only_in_objective(zoo):
    base = zoo["simclr"]
    for name in ("byol", "simsiam", "vicreg", "barlow_twins", "stochastic"):
        assert _diff(base, zoo[name]) == {"objective"}, name


@pytest.mark.parametrize("name, field", [
    ("simclr_z16", "z_dim"), ("simclr_ep2", "epochs"), ("simclr_head_none", "head.kind"),
    ("simclr_aug_crop", None), ("simclr_bs64", "batch_size"),
])
def test_simclr_sweeps_change_one_setting(zoo, name, field):
    d = _diff(zoo["simclr"], zoo[name])
    if field is None:  # augmentation set: only augment.* switches change
        assert d and all(k.startswith("augment.") for k in d)
        assert zoo[name].recipe.augment.crop and not zoo[name].recipe.augment.color_jitter
    else:
        assert d == {field}


def test_compact_zoo_expands_to_the_explicit_form(capsys):
    """model_zoo.yaml (defaults / base / sweep / seeds, metadata derived from the recipes) gives exactly the entries of
    its former explicit form (tests/data/model_zoo_explicit.yaml: every recipe and all metadata written by hand)."""
    capsys.readouterr()
    main(["zoo", "list", "--zoo", str(ZOO), "--expanded"])
    compact = {e["name"]: e for e in yaml.safe_load(capsys.readouterr().out)["models"]}
    main(["zoo", "list", "--zoo", str(EXPLICIT), "--expanded"])
    explicit = {e["name"]: e for e in yaml.safe_load(capsys.readouterr().out)["models"]}
    assert len(compact) == len(explicit) == 45
    for name, e in explicit.items():
        assert compact[name] == e, name
    assert ZOO.read_text().count("\n") < 40  # a screenful
