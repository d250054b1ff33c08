"""Names that become parts of file paths: one rule, one validator, one (model, dataset) -> file stem map.

Model names and dataset names (zoo ``name:``, a features entry's ``dataset:`` or its ``.npz`` stem, the folder of an
``imagefolder:`` dataset, ...) all name files, so all obey :data:`NAME_RE`: lowercase letters, digits, ``_ . -``,
not starting with ``.``, at most :data:`MAX_LEN` characters. No name can then hold a path separator or ``..`` alone,
and :data:`SEP` (``@``, which no name can contain) makes ``<model>@<dataset>`` unambiguous: model ``a`` on dataset
``b__c`` and model ``a__b`` on dataset ``c`` get different files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from riskdecomp.utils.atomic import real_folder
from riskdecomp.utils.errors import RiskdecompError

NAME_RE = re.compile(r"^[a-z0-9_-][a-z0-9_.-]*$")
MAX_LEN = 100  # two names + separator + suffix stay far below the 255-byte file-name limit
SEP = "@"
RULE = f"[a-z0-9_.-], not starting with '.', at most {MAX_LEN} characters"


def name_problem(value) -> Optional[str]:
    """Why ``value`` cannot be a name (None when it can)."""
    if not isinstance(value, str):
        return f"expected a string, got {type(value).__name__}"
    if not NAME_RE.fullmatch(value) or len(value) > MAX_LEN:
        return f"{value!r} must match {RULE} (it names files)"
    return None


# Architecture names (timm, incl. 'hf-hub:org/name') reach timm's / the hub's own cache folders: no '..', no leading
# '/', nothing but these characters (zoo entries' model / architecture and recipe backbones)
ARCH_RE = re.compile(r"^(hf[-_]hub:|timm/)?[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)?$")


def check_arch(v: str, what: str = "architecture") -> str:
    """Validate a timm architecture name (also used for recipe backbones)."""
    if not ARCH_RE.fullmatch(v) or ".." in v:
        raise ValueError(f"{what} {v!r} is not a valid model name ([A-Za-z0-9_.-], optionally 'hf-hub:org/name')")
    return v


def check_name(value, what: str = "name") -> str:
    """``value`` if it is a valid name, else a one-line :class:`RiskdecompError` that names ``what``."""
    problem = name_problem(value)
    if problem:
        raise RiskdecompError(f"{what}: {problem}")
    return value


def result_stem(model: str, dataset: str) -> str:
    """The file stem of one (model, dataset) result: ``<model>@<dataset>``, both names validated."""
    return f"{check_name(model, 'model name')}{SEP}{check_name(dataset, f'model {model!r}: dataset name')}"


def parse_stem(stem: str) -> Optional[tuple]:
    """``(model, dataset)`` of a stem made by :func:`result_stem`, or None for any other file name."""
    model, sep, dataset = stem.partition(SEP)
    if not sep or name_problem(model) or name_problem(dataset):
        return None
    return model, dataset


def result_path(out, kind: str, model: str, dataset: str) -> Path:
    """Where the ``kind`` result of (model, dataset) lives under ``out``: ``runs/<stem>.json`` (the run record),
    ``per_sample/<stem>.csv`` or ``active/<stem>.csv`` (the folder a real one, not a symbolic link:
    :func:`riskdecomp.utils.atomic.real_folder`). Every writer and reader goes through here."""
    suffix = {"runs": ".json", "per_sample": ".csv", "active": ".csv"}[kind]
    return real_folder(out, kind) / (result_stem(model, dataset) + suffix)


def ensemble_path(out, dataset: str) -> Path:
    """Where the zoo's ensemble scores on ``dataset`` live: ``ensemble/<dataset>.csv`` (one file per dataset, shared
    by every model evaluated on it; the name validated like every other)."""
    return real_folder(out, "ensemble") / f"{check_name(dataset, 'dataset name')}.csv"


# ------------------------------------------------------------------------------------------ pretraining seeds
SEED_NAME_RE = re.compile(r"^(?P<model>.+)\.s(?P<seed>\d+)$")


def seed_name(model: str, seed: int) -> str:
    return f"{model}.s{int(seed)}"


def split_seed(name: str) -> tuple[str, Optional[int]]:
    """``"simclr.s2"`` -> ``("simclr", 2)``; a name without the suffix -> ``(name, None)``. What a name claims, not
    proof that runs are seeds of one model (that is :func:`riskdecomp.analysis.seeds.seed_plan`'s job)."""
    m = SEED_NAME_RE.fullmatch(str(name))
    return (m.group("model"), int(m.group("seed"))) if m else (str(name), None)
