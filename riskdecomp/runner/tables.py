"""Table assembly: the per-sample table of one job and the leaderboard of all records, in a stable column order.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp.estimators.selection import DEFAULT_GRID
from riskdecomp.estimators.solvers import constant_columns
from riskdecomp.estimators.uncertainty import reference_indices
from riskdecomp.features.cache import Features
from riskdecomp.runner.records import Settings
from riskdecomp.utils.errors import RiskdecompError
from riskdecomp.utils.names import split_seed
from riskdecomp.utils.schema import OUTCOMES


def per_sample_table(feats: Features, dec, settings: Settings, extra_scores: Optional[pd.DataFrame] = None,
                     test_views: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Per test point: label, prediction, targets (err01, loss, brier_ovo) and single-encoder scores (with
    ``test_views``: ``aug_nc_<k>`` and ``aug_disp``, neighbours among the same reference set as the k-NN scores)."""
    from riskdecomp.estimators import uncertainty as U
    from riskdecomp.estimators.reliability import targets

    proba = np.asarray(dec.test_pred_proba)
    xs_tr, xs_te = feats.x_train, feats.x_test
    if settings.standardize:  # the one-vs-one Brier probes see the features the way the main probe does
        mu, sd = xs_tr.mean(0), xs_tr.std(0)
        sd = np.where(constant_columns(mu, sd), 1.0, sd + 1e-12)  # a (near-)constant column is not blown up
        xs_tr, xs_te = (xs_tr - mu) / sd, (xs_te - mu) / sd
    tg = targets(feats.y_test, proba, xs_tr, feats.y_train, xs_te)
    ref = reference_indices(len(feats.y_train), n_ref=settings.n_ref, seed=settings.seed)
    scores = U.label_free_scores(feats.x_test, feats.x_train, ref_idx=ref)
    probe = U.probe_scores(proba)
    probe = probe if isinstance(probe, pd.DataFrame) else pd.DataFrame(probe)
    parts = [pd.DataFrame({"index": np.arange(len(feats.y_test)), "y": feats.y_test}),
             tg.reset_index(drop=True), scores.reset_index(drop=True)]
    if test_views is not None:
        k = min(100, len(ref) - 1)
        aug = U.augmentation_consistency(test_views, feats.x_train[ref], k=k)
        parts.append(aug.reset_index(drop=True))
    if extra_scores is not None:
        if len(extra_scores) != len(feats.y_test):
            raise RiskdecompError(f"model {feats.model!r}: {len(extra_scores)} extra scores for "
                                  f"{len(feats.y_test)} test points")
        parts.append(extra_scores.reset_index(drop=True))
    df = pd.concat(parts + [probe.reset_index(drop=True)], axis=1)
    return df


def build_leaderboard(records: list) -> pd.DataFrame:
    if not records:
        return pd.DataFrame(columns=["model", "dataset", *OUTCOMES])
    df = pd.DataFrame([r["row"] for r in records])
    first = ["model", "dataset", "n_train", "n_test", "n_classes", "n_sub", "n_features", *OUTCOMES, "approx_merged"]

    def group(c: str) -> int:
        if c in first:
            return first.index(c) - 100
        if c.startswith("err_"):
            return 0
        if c.endswith(("_lo", "_hi")):
            return 1
        if c.endswith("_clipped"):
            return 2
        if c.startswith("fewshot_"):
            return 3
        if c.startswith(("C_", "n_")):
            return 4
        if c.startswith(("train", "test")):
            return 5
        return 6  # zoo metadata

    cols = sorted(df.columns, key=lambda c: (group(c), c if group(c) >= 0 else ""))
    return df[cols]


# ------------------------------------------------------------------------------------------------ flags
#: The leaderboard's ``flags`` codes, in the order they are written (docs/protocol.md, "Flags", says what each
#: means for reading the numbers):
#: - ``separable_train``: n_train <= n_features: a linear probe can fit any labelling of the train set, so the
#:   train->train error is 0, usability is 0 and the error that remains lands in probe_gen;
#: - ``never_pretrained``: the weights were never trained on anything (``objective: init``, ``pretrained: false``:
#:   the source's weights label ``random``), so enc_gen measures no pretraining: it is estimation noise;
#: - ``C_at_grid_edge``: a C chosen by the decomposition (a ``C_*`` column) is the smallest or largest value of the
#:   probe's grid (:data:`riskdecomp.estimators.selection.DEFAULT_GRID`): the best fit may lie beyond it (the
#:   grid is not widened: that would change every committed number).
FLAG_CODES = ("separable_train", "never_pretrained", "C_at_grid_edge")
#: columns the runner adds to ``leaderboard.csv`` and ``leaderboard_seeds.csv`` (after ``pretrain_seed(s)``)
FLAG_COLUMNS = ("reference", "is_reference", "flags")


def _record_reference(rec: dict) -> str:
    """The reference run of a record: its ``reference`` field, else (a record written before it held one) what its
    pretraining identity says; "" when it has none or says nothing."""
    if "reference" in rec:
        return rec["reference"] or ""
    ident = (rec.get("pretraining") or {}).get("identity") or {}
    ref = ident.get("reference")
    if isinstance(ref, dict) and isinstance(ref.get("same_seed_of"), str):
        return f"{ref['same_seed_of']}.s{rec['pretraining']['seed']}"
    return ref if isinstance(ref, str) else ""


def _never_pretrained(rec: dict) -> bool:
    """Whether a record's weights were never pretrained: its ``weights`` field, else (an older record) a recipe's
    ``objective: init``."""
    if "weights" in rec:
        return rec["weights"] == "random"
    return rec["row"].get("objective") == "init"


def _at_grid_edge(row: dict, grid=DEFAULT_GRID) -> bool:
    ends = (float(np.min(grid)), float(np.max(grid)))
    cs = [v for c, v in row.items() if c.startswith("C_") and isinstance(v, (int, float)) and not isinstance(v, bool)]
    return any(np.isclose(c, e, rtol=1e-6, atol=0) for c in cs for e in ends)


def run_flags(rec: dict) -> list:
    """The :data:`FLAG_CODES` that apply to one run record."""
    row = rec["row"]
    n, d = row.get("n_train"), row.get("n_features")
    codes = []
    if isinstance(n, (int, float)) and isinstance(d, (int, float)) and n <= d:
        codes.append("separable_train")
    if _never_pretrained(rec):
        codes.append("never_pretrained")
    if _at_grid_edge(row):
        codes.append("C_at_grid_edge")
    return codes


def _insert_after(df: pd.DataFrame, anchors: tuple, cols: dict) -> pd.DataFrame:
    at = max([list(df.columns).index(a) + 1 for a in anchors if a in df.columns], default=len(df.columns))
    out = df.drop(columns=[c for c in cols if c in df.columns])
    at = min(at, len(out.columns))
    for i, (name, values) in enumerate(cols.items()):
        out.insert(at + i, name, values)
    return out


def with_flags(board: pd.DataFrame, per_seed: Optional[pd.DataFrame], records: list) -> tuple:
    """``(board, per_seed)`` with :data:`FLAG_COLUMNS`: ``reference`` (the model's reference; in the pooled board the
    pooled name, without ``.s<seed>``), ``is_reference`` (another row of the dataset names it as its reference) and
    ``flags`` (";"-joined :data:`FLAG_CODES`, "" for none; a pooled row has every code of any of its seeds).
    ``per_seed``: :func:`riskdecomp.analysis.seeds.aggregate_seeds`' per-run table (None: the board is per run)."""
    if board.empty or "model" not in board:
        return board, per_seed
    by_run = {(r["model"], r["dataset"]): r for r in records}
    runs = per_seed if per_seed is not None else board
    base = {(m, d): m for m, d in zip(runs["model"], runs["dataset"])}
    if per_seed is not None:
        base = {(m, d): b for m, d, b in zip(runs["model"], runs["dataset"], runs["base_model"])}

    def run_columns(keys) -> dict:
        refs = [_record_reference(by_run[k]) if k in by_run else "" for k in keys]
        used = {(r, k[1]) for r, k in zip(refs, keys) if r}
        flags = [";".join(run_flags(by_run[k])) if k in by_run else "" for k in keys]
        return {"reference": refs, "is_reference": [k in used for k in keys], "flags": flags}

    keys = list(zip(runs["model"], runs["dataset"]))
    per_run = run_columns(keys)
    if per_seed is None:
        return _insert_after(board, ("dataset",), per_run), None
    per_seed = _insert_after(per_seed, ("pretrain_seed",), per_run)
    pooled_ref, pooled_flags = {}, {}
    for k, ref, fl in zip(keys, per_run["reference"], per_run["flags"]):
        b = (base[k], k[1])
        pooled_ref.setdefault(b, set()).add(base.get((ref, k[1]), split_seed(ref)[0]) if ref else "")
        pooled_flags.setdefault(b, set()).update(fl.split(";") if fl else [])
    bkeys = list(zip(board["model"], board["dataset"]))
    refs = ["|".join(sorted(pooled_ref.get(b, set()) - {""})) for b in bkeys]
    used = {(r, b[1]) for rr, b in zip(refs, bkeys) for r in rr.split("|") if r}
    return _insert_after(board, ("pretrain_seeds", "dataset"), {
        "reference": refs, "is_reference": [b in used for b in bkeys],
        "flags": [";".join(c for c in FLAG_CODES if c in pooled_flags.get(b, ())) for b in bkeys],
    }), per_seed
