"""Few-shot linear-probe evaluation: k labeled examples per class, or a class-balanced fraction of D_tr.

For each setting and seed:

1. labeled set L: ``m`` examples per class drawn without replacement from D_tr (``m = k`` for k-shot;
   ``m = max(1, round(p * |D_tr| / K))`` for a fraction p, i.e. class-balanced);
2. validation set V: ``min(max(m, 5), left)`` examples per class drawn from D_tr \\ L (disjoint from L;
   the published code let them overlap);
3. C chosen on V along the warm-started path fitted on L (strong -> weak, early stopping), the probe at
   that C is the one fitted on L;
4. test error (percent) on D_te.

A setting where some class has fewer than ``m + 1`` train examples (one must remain for validation) is
skipped: summary value NaN and ``fewshot_<name>_skipped`` holds the reason. Std over seeds is the
sample std (ddof=1; 0 with one seed).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from riskdecomp.estimators.probe import DEFAULT_STANDARDIZE, LinearProbe
from riskdecomp.estimators.selection import PathFitter, as_grid, fit_path
from riskdecomp.utils.errors import FeatureError, RiskdecompError
from riskdecomp.utils.validation import check_features, check_int


def _pct_name(p: float) -> str:
    v = p * 100
    return f"{int(round(v))}pct" if abs(v - round(v)) < 1e-9 else f"{v:g}pct"


def draw_labeled_and_val(
    y: np.ndarray, per_class: int, rng: np.random.Generator, val_min: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced labeled indices (``per_class`` per class) and a disjoint validation set."""
    lab, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        lab.append(idx[:per_class])
        rest = idx[per_class:]
        val.append(rest[: min(max(per_class, val_min), len(rest))])
    return np.sort(np.concatenate(lab)), np.sort(np.concatenate(val))


def fewshot_errors(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    shots: Sequence[int] = (1, 3, 5, 10),
    fractions: Sequence[float] = (0.01, 0.1),
    n_seeds: int = 5,
    seed: int = 0,
    grid: Sequence[float] | None = None,
    device: str = "auto",
    standardize: bool = DEFAULT_STANDARDIZE,
    patience: int = 2,
    probe: BaseEstimator | None = None,
) -> tuple[dict, pd.DataFrame]:
    """Few-shot test errors (percent). Returns (summary dict, tidy table).

    ``shots``: integers >= 1; ``fractions``: in (0, 1); anything else is a one-line RiskdecompError (never
    coerced: -1 shots or a fraction of 0 used to run as other settings under a misleading name).

    summary: ``fewshot_<k>shot``, ``fewshot_<k>shot_std``, ``fewshot_<p>pct``, ``fewshot_<p>pct_std``
    (+ ``fewshot_<name>_skipped`` with a reason for skipped settings).
    table columns: setting, kind, k_or_fraction, seed, n_labeled, n_val, C, error, skipped.
    """
    x_train, y_train = check_features(x_train, y_train, "x_train")
    x_test, y_test = check_features(x_test, y_test, "x_test")
    shots = [check_int(k, "few-shot shots (examples per class)", 1) for k in shots]
    for p in fractions:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0 < float(p) < 1:
            raise RiskdecompError(f"few-shot fractions must be in (0, 1) (a fraction of the train set; 1 would leave "
                                  f"no validation examples), got {p!r}")
    fractions = [float(p) for p in fractions]
    names = [f"{k}shot" for k in shots] + [_pct_name(p) for p in fractions]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise RiskdecompError(f"few-shot settings given twice: {', '.join(dup)}")
    n_seeds, seed = check_int(n_seeds, "few-shot n_seeds", 1), check_int(seed, "seed", 0)
    patience = check_int(patience, "patience", 1)
    if x_train.shape[1] != x_test.shape[1]:
        raise FeatureError(f"x_test has {x_test.shape[1]} features but x_train has {x_train.shape[1]}")
    missing = np.setdiff1d(np.unique(y_test), np.unique(y_train))
    if missing.size:
        raise FeatureError(f"y_test has classes absent from y_train: {missing[:5].tolist()}")
    g = as_grid(grid)
    est = probe if probe is not None else LinearProbe(standardize=standardize, device=device)
    if probe is None:
        x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    classes, counts = np.unique(y_train, return_counts=True)
    K = len(classes)
    settings: list[tuple[str, str, float, int]] = []
    for k in shots:
        settings.append((f"{k}shot", "shots", k, k))
    for p in fractions:
        settings.append((_pct_name(p), "fraction", float(p), max(1, int(round(p * len(y_train) / K)))))

    rows, summary = [], {}
    for si, (name, kind, value, m) in enumerate(settings):
        key = f"fewshot_{name}"
        reason = None
        if K < 2:
            reason = "fewer than 2 classes in train"
        elif counts.min() < m + 1:
            c = classes[np.argmin(counts)]
            c = c.item() if isinstance(c, np.generic) else c
            reason = f"class {c} has {counts.min()} train examples, need {m} labeled + 1 validation"
        if reason is not None:
            summary[key], summary[f"{key}_std"], summary[f"{key}_skipped"] = np.nan, np.nan, reason
            rows.append(dict(setting=name, kind=kind, k_or_fraction=value, seed=np.nan, n_labeled=m * K,
                             n_val=0, C=np.nan, error=np.nan, skipped=reason))
            continue
        errs = []
        for s in range(n_seeds):
            rng = np.random.default_rng([seed, si, s])
            lab, val = draw_labeled_and_val(y_train, m, rng)
            path = PathFitter(est, x_train[lab], y_train[lab], g)
            C, _ = fit_path(path, x_train[val], y_train[val], patience=patience)
            err = 100.0 * float(np.mean(path.get(C).predict(x_test) != y_test))
            errs.append(err)
            rows.append(dict(setting=name, kind=kind, k_or_fraction=value, seed=s, n_labeled=len(lab),
                             n_val=len(val), C=C, error=err, skipped=None))
        summary[key] = float(np.mean(errs))
        summary[f"{key}_std"] = float(np.std(errs, ddof=1)) if len(errs) > 1 else 0.0
    return summary, pd.DataFrame(rows)
