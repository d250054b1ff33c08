"""Table assembly: the per-sample table of one job and the leaderboard of all records, in a stable column order.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd

from riskdecomp.estimators.solvers import constant_columns
from riskdecomp.estimators.uncertainty import reference_indices
from riskdecomp.features.cache import Features
from riskdecomp.runner.records import Settings
from riskdecomp.utils.errors import RiskdecompError
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
    first = ["model", "dataset", "n_train", "n_test", "n_classes", "n_sub", *OUTCOMES, "approx_merged"]

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
