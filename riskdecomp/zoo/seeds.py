"""Pretraining seeds as an axis of the zoo: expansion of ``seeds:`` entries (their aggregation:
:mod:`riskdecomp.analysis.seeds`).

Expansion (:func:`expand_seeds`, called by :func:`riskdecomp.zoo.parse_zoo`): a ``recipe`` entry (or ``defaults:``)
may carry ``seeds: [0, 1, 2]``; the entry becomes one entry per seed, named ``<name>.s<seed>`` with
``recipe.seed = <seed>``, each its own pretraining run and run record. A ``reference:`` naming a seeded model is
rewritten to the same seed of that model (an entry without seeds takes the reference's first seed).

Naming convention: a model name ending in ``.s<digits>`` names seed ``<digits>`` of the model named by the rest
(:func:`riskdecomp.utils.names.split_seed`). The name alone pools nothing: the leaderboard pools runs as seeds of one
model only when their run records prove it (the entry minus its seed equal, each seed once, the name's seed = the
recipe's ``seed``: :mod:`riskdecomp.analysis.seeds`). Entries written out by hand as ``x.s0, x.s1`` pool when each
gives its ``recipe.seed``; without it they are one pretraining run (seed 0) several times and stay separate rows.
"""

from __future__ import annotations

import copy
from typing import Optional

from riskdecomp.utils.errors import ZooError
from riskdecomp.utils.names import seed_name, split_seed
from riskdecomp.utils.validation import TORCH_SEED_MAX
from riskdecomp.zoo.expand import MAX_ENTRIES, too_many


def _check_seeds(value, where: str) -> list:
    if (not isinstance(value, list) or not value
            or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= TORCH_SEED_MAX for s in value)):
        raise ZooError(f"{where}: field 'seeds': expected a non-empty list of non-negative integers below 2**64 "
                       f"(what torch.manual_seed accepts), got {value!r}")
    if len(set(value)) != len(value):
        raise ZooError(f"{where}: field 'seeds': duplicate seed in {value!r}")
    return list(value)


def expand_seeds(models: list, defaults: dict, where: str, labels: Optional[list] = None) -> tuple[list, dict]:
    """Raw zoo entries (dicts, before validation) with ``seeds:`` expanded; returns ``(models, defaults)`` with
    ``seeds`` removed from both. ``defaults.seeds`` applies to every ``recipe`` entry that gives none.
    Entries that are not mappings are passed through (parse_zoo reports them). ``labels``: how errors name each of
    ``models`` (the entry as the user wrote it, e.g. ``models[0] ('s') sweep variant 's_lr1'``; default
    ``models[i]``): ``models`` may already be expanded, and its index is then not the file's."""
    defaults = dict(defaults)
    default_seeds = defaults.pop("seeds", None)
    if default_seeds is not None:
        default_seeds = _check_seeds(default_seeds, f"{where}: defaults")
    plan = []  # (raw entry, its seeds or None, its label)
    for i, raw in enumerate(models):
        if not isinstance(raw, dict):
            plan.append((raw, None, None))
            continue
        label = f"{where}: " + (labels[i] if labels is not None else
                                 f"models[{i}]" + (f" ({raw['name']!r})" if "name" in raw else ""))
        source = raw.get("source", defaults.get("source"))
        seeds = raw.get("seeds", default_seeds if source == "recipe" else None)
        if seeds is None:
            plan.append((raw, None, label))
            continue
        seeds = _check_seeds(seeds, label)
        if source != "recipe":
            raise ZooError(f"{label}: field 'seeds': only recipe entries have a pretraining seed "
                           f"(source {source!r})")
        recipe = raw.get("recipe", defaults.get("recipe"))
        if isinstance(recipe, dict) and "seed" in recipe:
            raise ZooError(f"{label}: field 'seeds': give either recipe.seed or seeds, not both")
        if isinstance(raw.get("name"), str) and split_seed(raw["name"])[1] is not None:
            raise ZooError(f"{label}: field 'seeds': the name {raw['name']!r} already ends in .s<seed>")
        plan.append((raw, seeds, label))
    total = sum(len(seeds) if seeds is not None else 1 for _, seeds, _ in plan)  # counted before any copy is made
    if total > MAX_ENTRIES:
        raise too_many(where, "the entries with their pretraining seeds", total)
    seeded = {raw["name"]: seeds for raw, seeds, _ in plan if seeds is not None and isinstance(raw.get("name"), str)}
    out = []
    for raw, seeds, label in plan:
        if seeds is None:
            if isinstance(raw, dict):
                raw = {k: v for k, v in raw.items() if k != "seeds"}
                ref = raw.get("reference", defaults.get("reference"))
                if ref in seeded:
                    raw["reference"] = seed_name(ref, seeded[ref][0])
            out.append(raw)
            continue
        base = {k: v for k, v in raw.items() if k != "seeds"}
        recipe = base.get("recipe", defaults.get("recipe"))
        ref = base.get("reference", defaults.get("reference"))
        for s in seeds:
            e = copy.deepcopy(base)
            e["name"] = seed_name(base["name"], s) if isinstance(base.get("name"), str) else base.get("name")
            e["recipe"] = {**copy.deepcopy(recipe), "seed": s} if isinstance(recipe, dict) else {"seed": s}
            if ref in seeded:
                if s not in seeded[ref]:
                    raise ZooError(f"{label} seed {s}: field 'reference': {ref!r} has no seed {s} "
                                   f"(its seeds: {seeded[ref]})")
                e["reference"] = seed_name(ref, s)
            out.append(e)
    names = {e.get("name") for e in out if isinstance(e, dict)}
    for n in sorted(x for x in names if isinstance(x, str)):
        base, seed = split_seed(n)
        if seed is not None and base in names:  # the leaderboard would pool "base" with the seeds of "base"
            raise ZooError(f"{where}: model {n!r} is a seed of {base!r}, which is also an entry of its own: "
                           "rename one of them")
    return out, defaults
