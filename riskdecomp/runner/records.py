"""Run keys and run records: what identifies a (model, dataset) result, and the checks a record must pass to be reused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from riskdecomp import __version__
from riskdecomp.sources import source_of
from riskdecomp.utils.atomic import atomic_write_text, jsonable, real_folder
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.names import parse_stem, split_seed
from riskdecomp.utils.schema import COMPONENTS
from riskdecomp.utils.validation import SKLEARN_SEED_MAX

RECORD_VERSION = 2
# Bump when an estimator changes its numbers (decomposition, few-shot, statistics, uncertainty, active learning):
# records of an older protocol are then recomputed, and a results folder is not mixed across protocols.
PROTOCOL_VERSION = 3  # 3: an encoder that is its own reference has usability exactly 0
SUM_TOL = 1e-9  # relative: agg_risk is computed as the sum of its components, so they agree to float rounding
FOLDER_STATE = "_folder.json"
FAILURES_STATE = "_failures.json"
STAGES_STATE = "_zoo_stages.json"
#: every folder riskdecomp writes to or deletes from under --out: real folders, never symbolic links (checked before
#: any compute: :func:`riskdecomp.utils.atomic.real_folder`)
OUTPUT_FOLDERS = ("runs", "per_sample", "active", "ensemble", "analysis", "plots")
#: bumped when the zoo-wide stages write differently (2: ensemble scores in ``ensemble/<dataset>.csv``): a folder made
#: by an earlier version gets them redone once
ZOO_STAGES_VERSION = 2


def positive_int(v, name, zero_ok=False) -> None:
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool) and (v >= 0 if zero_ok else v >= 1)
    if not ok:
        raise RiskdecompError(f"{name} {v!r}: expected an integer >= {0 if zero_ok else 1}")


@dataclass
class Settings:
    """Everything that changes the numbers of a run (part of the run key), plus execution knobs (not in the key)."""

    seed: int = 0
    n_boot: int = 1000
    shots: tuple = (1, 3, 5, 10)
    fractions: tuple = (0.01, 0.1)
    fewshot_seeds: int = 5
    statistics: bool = True
    uncertainty: bool = True
    uncertainty_boot: int = 200
    # random views per test image (crop + flip) for the augmentation-consistency scores and testaug_* statistics;
    # costs aug_views extra forward passes over the test split per encoder (0 or 1: off)
    aug_views: int = 4
    n_ref: int = 5000
    active: bool = True
    active_seeds: int = 2
    active_budget_per_class: int = 20
    alternative: bool = False
    # Standardize features (mean/std of the probe's own fitting set) before every probe: encoders emit features on
    # wildly different scales (a random-init CNN's are ~1e-3), and a fixed C grid only means the same thing across
    # encoders on a common scale. The model class is unchanged (an affine map of the features).
    standardize: bool = True
    # Precision of the feature cache (features.FEATURE_DTYPES): float16 halves disk and memory; float32 is opt-in
    feature_dtype: str = "float16"
    # execution only (not part of the run key)
    device: str = "auto"
    batch_size: int = 256
    num_workers: object = "auto"
    progress: bool = True
    threads: Optional[int] = None  # torch/BLAS threads per job (None: cores / jobs)

    EXECUTION = ("device", "batch_size", "num_workers", "progress", "threads")
    ZOO_LEVEL = ("uncertainty_boot",)  # used only by the zoo-level summaries, not by a run: not in the run key

    def __post_init__(self):
        """Settings the estimators cannot honour are a one-line error, never coerced."""
        for name in ("seed", "n_boot", "uncertainty_boot", "aug_views"):
            positive_int(getattr(self, name), f"settings.{name}", zero_ok=True)
        for name in ("fewshot_seeds", "n_ref", "active_seeds", "active_budget_per_class", "batch_size"):
            positive_int(getattr(self, name), f"settings.{name}")
        if self.seed > SKLEARN_SEED_MAX:  # scikit-learn's random_state (numpy RandomState) takes no larger seed
            raise RiskdecompError(f"settings.seed {self.seed}: expected an integer in [0, {SKLEARN_SEED_MAX}]")
        if self.threads is not None:
            positive_int(self.threads, "settings.threads")
        from riskdecomp.features.cache import check_feature_dtype

        self.feature_dtype = check_feature_dtype(self.feature_dtype)
        self.shots, self.fractions = tuple(self.shots), tuple(self.fractions)
        for k in self.shots:
            positive_int(k, "shots: k")
        for f in self.fractions:
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                raise RiskdecompError(f"fractions: {f!r}: expected a fraction of the train split in (0, 1)")

    def key_dict(self) -> dict:
        """The settings that change any output (the folder's settings key)."""
        d = asdict(self)
        for k in self.EXECUTION:
            d.pop(k)
        d["shots"], d["fractions"] = list(self.shots), list(self.fractions)
        return d

    def run_key_dict(self) -> dict:
        """The settings that change a run record or its per-sample / active files."""
        d = self.key_dict()
        for k in self.ZOO_LEVEL:
            d.pop(k)
        return d

    def key(self) -> str:
        """The settings key of records and of a results folder: the settings that change a record, the protocol and
        the package version (results are never mixed across them). Zoo-level settings (``ZOO_LEVEL``) are not in
        it: changing them just rebuilds the summaries from the same records."""
        return settings_digest([PROTOCOL_VERSION, __version__, self.run_key_dict()])


def settings_digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _file_digest(path) -> str:
    from riskdecomp.sources.base import file_sha256

    p = Path(path)
    return file_sha256(p) if p.is_file() else "missing"


def entry_key(entry, ds=None, cache_dir=None, settings: Optional[Settings] = None, force: bool = False) -> dict:
    """What of an entry changes its numbers: its fields (not ``metadata``, which only labels the row and is
    refreshed on reuse, nor where its files are) and its weights -- :func:`riskdecomp.features.encoders.entry_identity` (file hashes, the recipe
    checkpoint, the init seed of a random initialization) or, for a ``features`` entry, the SHA-256 of its file."""
    from riskdecomp.features import encoders

    src = source_of(entry)
    # files: by content, not location; init_seed: in the identity where the build can leave random weights (a hub
    # model's key does not depend on it)
    d = entry.model_dump(mode="json", exclude={"metadata", "init_seed", *src.files})
    if not src.has_encoder:
        d.update({f"{f}_sha256": _file_digest(getattr(entry, f)) for f in src.files})
    else:
        kw = {"device": settings.device, "progress": settings.progress} if settings is not None else {}
        d["identity"] = encoders.entry_identity(entry, ds, cache_dir=cache_dir, force=force, **kw)
    return d


def run_key(entry, reference, ds, dataset_fingerprint: str, settings: Settings, cache_dir=None,
            force: bool = False) -> str:
    """The key a reusable record must carry (see the module docstring). With ``force``, a recipe entry's
    checkpoint is pretrained again before its identity is taken."""
    return settings_digest([RECORD_VERSION, PROTOCOL_VERSION, __version__, entry_key(entry, ds, cache_dir, settings, force),
                    entry_key(reference, ds, cache_dir, settings) if reference else None, dataset_fingerprint,
                    settings.run_key_dict()])


def pretraining_identity(entry) -> Optional[dict]:
    """What makes runs seeds of one model (the run record's ``pretraining`` field; not part of the run key): for an
    entry with a pretraining seed (a recipe entry) ``{"seed": recipe.seed, "identity": ...}`` where ``identity`` is
    the entry minus its seed -- every field but ``name`` and ``recipe.seed`` (source, recipe, reference, representation,
    metadata, ...), a reference to the same seed of a model written as ``{"same_seed_of": model}``; None for an
    entry without a pretraining seed. :func:`riskdecomp.analysis.seeds.aggregate_seeds` pools runs as seeds of one
    model only when their identities are equal and each name's ``.s<seed>`` is its recipe's seed."""
    recipe = getattr(entry, "recipe", None)
    if recipe is None or not isinstance(getattr(recipe, "seed", None), int):
        return None
    ident = entry.model_dump(mode="json", exclude={"name", *source_of(entry).files})
    ident["recipe"].pop("seed", None)
    ref_base, ref_seed = split_seed(entry.reference) if entry.reference else (None, None)
    if ref_seed is not None and ref_seed == recipe.seed:
        ident["reference"] = {"same_seed_of": ref_base}
    return json.loads(json.dumps(jsonable({"seed": int(recipe.seed), "identity": ident}), sort_keys=True))


def run_facts(entry) -> dict:
    """What a run record says about its entry besides the numbers (not part of the run key; added to a reused record
    that lacks it, like ``pretraining``): ``reference`` (the entry's reference, None without one) and ``weights``
    (:meth:`riskdecomp.sources.base.Source.weights_label`: ``random`` = weights never pretrained on anything)."""
    return {"reference": entry.reference, "weights": source_of(entry).weights_label(entry)}


def _facts_problem(rec: dict) -> Optional[str]:
    """Why the optional fields of :func:`run_facts` and the row's ``n_features`` are malformed (None: fine or absent)."""
    if rec.get("reference") is not None and not isinstance(rec["reference"], str):
        return "field 'reference' is not a model name or null"
    if "weights" in rec and not isinstance(rec["weights"], str):
        return "field 'weights' is not a string"
    d = rec["row"].get("n_features")
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
        return "row field 'n_features' is not an integer >= 1"
    return None


def _pretraining_problem(value) -> Optional[str]:
    if value is None:
        return None
    if (not isinstance(value, dict) or set(value) != {"seed", "identity"} or not isinstance(value["identity"], dict)
            or isinstance(value["seed"], bool) or not isinstance(value["seed"], int) or value["seed"] < 0):
        return "field 'pretraining' is not {seed: int >= 0, identity: mapping} or null"
    return None


def dataset_name(entry, ds) -> str:
    """The dataset name of an entry's results: a ``features`` entry's ``dataset:`` (else its file's stem), else the
    loaded dataset's name."""
    return source_of(entry).dataset_name(entry) or ds.name


def flatten_metadata(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        out[k] = "|".join(map(str, v)) if isinstance(v, (list, tuple)) else v
    return out


# ------------------------------------------------------------------------------------------------ records
def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_record(rec, model: str, dataset: str) -> Optional[str]:
    """Why ``rec`` is not a valid run record of (model, dataset), or None when it is: the schema, the names (a
    record copied from another model is not trusted), finite numbers, and components that add up to ``agg_risk``
    (``approx`` is absent without a reference). The sum is exact by construction, so the tolerance is float
    rounding (``SUM_TOL`` relative), far below any meaningful edit."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if rec.get("version") != RECORD_VERSION:
        return f"record version {rec.get('version')!r}, expected {RECORD_VERSION}"
    for k, typ in (("run_key", str), ("settings_key", str), ("model", str), ("dataset", str), ("row", dict),
                   ("fewshot", list), ("timings", dict)):
        if not isinstance(rec.get(k), typ):
            return f"field {k!r} missing or not a {typ.__name__}"
    row = rec["row"]
    for who, m, d in (("record", rec["model"], rec["dataset"]), ("row", row.get("model"), row.get("dataset"))):
        if (m, d) != (model, dataset):
            return f"{who} names model {m!r} on {d!r}, not {model!r} on {dataset!r}"
    if not _number(row.get("agg_risk")):
        return "agg_risk missing or not a finite number"
    parts = []
    for c in COMPONENTS:
        v = row.get(c)
        if v is None and c == "approx":
            continue
        if not _number(v):
            return f"component {c!r} missing or not a finite number"
        parts.append(v)
    total = math.fsum(parts)
    if abs(total - row["agg_risk"]) > SUM_TOL * max(1.0, abs(row["agg_risk"])):
        return f"components add up to {total:.6g}, not agg_risk {row['agg_risk']:.6g}"
    if any(not isinstance(r, dict) or (r.get("model"), r.get("dataset")) != (model, dataset) for r in rec["fewshot"]):
        return "few-shot rows of another model or dataset"
    return _pretraining_problem(rec.get("pretraining")) or _facts_problem(rec)


def read_record(path: Path, model: str, dataset: str) -> tuple:
    """(record, None) when ``path`` holds a valid record of (model, dataset), else (None, why) -- why is None when
    there is simply no file."""
    if not path.exists():
        return None, None
    try:
        rec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    why = check_record(rec, model, dataset)
    return (None, why) if why else (rec, None)


def read_records(out) -> tuple:
    """All valid run records in ``out/runs`` as {(model, dataset): record}, and [(path, why)] for invalid ones."""
    valid, invalid = {}, []
    for p in sorted(real_folder(out, "runs").glob("*.json")):
        md = parse_stem(p.stem)
        if md is None:
            continue  # the folder's state files (_folder.json, ...)
        rec, why = read_record(p, *md)
        if rec is None:
            invalid.append((p, why))
        else:
            valid[md] = rec
    return valid, invalid


def read_state(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}


def check_folder_state(state) -> Optional[str]:
    """Why ``state`` is not a valid folder state (``runs/_folder.json``), or None when it is: checked like a run record
    (a damaged one is never read as "no settings" or "no order")."""
    if not isinstance(state, dict):
        return "not a JSON object"
    for k, typ in (("settings_key", str), ("settings", dict), ("order", list)):
        if not isinstance(state.get(k), typ):
            return f"field {k!r} missing or not a {'JSON object' if typ is dict else typ.__name__}"
    if not state["settings_key"]:
        return "field 'settings_key' is empty"
    if not all(isinstance(n, str) for n in state["order"]):
        return "field 'order' holds a non-string"
    return None


def read_folder_state(runs: Path) -> tuple:
    """``(state, why)`` of ``runs/_folder.json``: ``({}, None)`` when there is no such file, ``({}, why)`` when it
    is unreadable or damaged (:func:`check_folder_state`), else ``(state, None)``."""
    path = runs / FOLDER_STATE
    if not path.exists():
        return {}, None
    try:
        state = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return {}, f"unreadable ({type(exc).__name__})"
    why = check_folder_state(state)
    return ({}, why) if why else (state, None)


def write_state(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(jsonable(data), indent=1, sort_keys=True))


# ------------------------------------------------------------------------------------------------ one job
