"""Regularization selection: func:`tune_probe`, :func:`fit_path`): a log grid of ``C`` walked from
strong to weak regularization with warm starts, evaluating each fit on held-out data (0-1 error, ties broken
by the lower log-loss) and stopping once the error has been strictly worse than the best for ``patience``
consecutive grid points (never on a plateau of equal errors).
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedShuffleSplit

from riskdecomp.estimators.probe import LinearProbe

#: Default regularization grid: 10 values of C log-spaced over 1e-4 .. 1e2 (sklearn's meaning of C,
#: i.e. the penalty relative to the *sum* of losses). For n training points the effective weight decay
#: on the mean loss is 1/(n C): with n = 50,000 this spans 0.2 .. 2e-7 (strong to essentially none);
#: with a few-shot set of n = 10 it spans 1e3 .. 1e-3.
DEFAULT_GRID: np.ndarray = np.logspace(-4, 2, 10)


def stratified_split(y: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (keep, out) with ``len(out) == n_out``, stratified and seeded.

    Falls back to a seeded random split when stratification is impossible (a class with a single
    member, or fewer out-slots than classes); in that split every class keeps a member in ``keep`` where
    the other classes can spare one (a class's lone member is not carved out: the probe fitted on
    ``keep`` would not know the class at all).
    """
    y = np.asarray(y)
    n = len(y)
    if not 0 < n_out < n:
        raise ValueError(f"cannot carve {n_out} of {n} points")
    try:
        sss = StratifiedShuffleSplit(n_splits=1, test_size=n_out, random_state=seed)
        keep, out = next(sss.split(np.zeros(n), y))
    except ValueError:
        perm = np.random.default_rng(seed).permutation(n)
        keep, out = _keep_every_class(y, perm[n_out:], perm[:n_out])
    return np.sort(keep), np.sort(out)


def _keep_every_class(y: np.ndarray, keep: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(keep, out) with, for each class present only in ``out``, its first member there swapped with the last
    ``keep`` point of a class that has more than one member in ``keep`` (sizes unchanged; deterministic)."""
    keep, out = keep.copy(), out.copy()
    counts = dict(zip(*np.unique(y[keep], return_counts=True)))
    for c in np.unique(y[out]):
        if counts.get(c, 0):
            continue
        spare = [i for i in range(len(keep) - 1, -1, -1) if counts[y[keep[i]]] > 1]
        if not spare:
            break
        i, j = spare[0], int(np.nonzero(y[out] == c)[0][0])
        counts[y[keep[i]]] -= 1
        counts[c] = 1
        keep[i], out[j] = out[j], keep[i]
    return keep, out


def as_grid(grid: Sequence[float] | None) -> np.ndarray:
    g = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float).ravel()
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("the C grid must hold positive finite values")
    return np.sort(g)  # strong -> weak regularization


class SingleClassModel(ClassifierMixin, BaseEstimator):
    """What a probe learns from a fitting set that holds a single class (a rare class can be missing from a
    cross-fitting fold, or from its fitting part): that class, with probability 1, for every point."""

    def __init__(self, label=None):
        self.label = label

    def fit(self, X, y):
        self.classes_ = np.unique(np.asarray(y))[:1]
        self.coef_ = np.zeros((1, np.shape(X)[1]))
        self.intercept_ = np.zeros(1)
        self.n_iter_ = np.array([0])
        self.converged_ = True
        return self

    def predict_proba(self, X) -> np.ndarray:
        return np.ones((len(X), 1))

    def predict(self, X) -> np.ndarray:
        return np.repeat(self.classes_, len(X))


def fit_probe(estimator: BaseEstimator, x: np.ndarray, y: np.ndarray) -> BaseEstimator:
    """``estimator.fit(x, y)``; a :class:`SingleClassModel` instead when ``y`` holds a single class."""
    if len(np.unique(np.asarray(y))) < 2:
        return SingleClassModel().fit(x, y)
    return estimator.fit(x, y)


class PathFitter:
    """Warm-started regularization path on one fitting set, fitted lazily and cached by C.

    ``get(C)`` returns the model fitted at ``C``, fitting every grid value up to it (in increasing C,
    each fit starting from the previous solution) if needed.
    """

    def __init__(self, estimator: BaseEstimator, x: np.ndarray, y: np.ndarray, grid: np.ndarray):
        self.grid = np.sort(np.asarray(grid, dtype=float))
        self.x, self.y = x, y
        self._warm = estimator.get_params().get("warm_start", False)
        self._est = clone(estimator).set_params(warm_start=True)
        self.models: dict[float, BaseEstimator] = {}
        self._next = 0

    def get(self, C: float) -> BaseEstimator:
        C = float(C)
        while C not in self.models:
            if self._next >= len(self.grid):
                raise KeyError(f"C={C} is not in the grid")
            c = float(self.grid[self._next])
            self._next += 1
            model = fit_probe(self._est.set_params(C=c), self.x, self.y)
            self.models[c] = (copy.deepcopy(model).set_params(warm_start=self._warm) if model is self._est
                              else model)
        return self.models[C]


def eval_loss(model: BaseEstimator, x: np.ndarray, y: np.ndarray) -> float:
    """Mean log-loss (nats) of ``model`` on (x, y); NaN for a model without ``predict_proba``. A label the model
    never saw counts as probability 1e-300."""
    if not hasattr(model, "predict_proba"):
        return float("nan")
    proba = model.predict_proba(x)
    col = {c: i for i, c in enumerate(np.asarray(model.classes_).tolist())}
    idx = np.array([col.get(v, -1) for v in np.asarray(y).tolist()])
    p = np.where(idx >= 0, proba[np.arange(len(idx)), np.maximum(idx, 0)], 0.0)
    return float(-np.mean(np.log(np.clip(p, 1e-300, None))))


def fit_path(
    fitter: PathFitter,
    x_eval: np.ndarray,
    y_eval: np.ndarray,
    patience: int | None = 2,
) -> tuple[float, pd.DataFrame]:
    """Walk ``fitter``'s grid from strong to weak regularization, scoring each fit's 0-1 error and mean log-loss
    on (x_eval, y_eval); return the C with the lowest error, ties broken by the lower loss.

    Early stopping: the walk ends after ``patience`` consecutive grid points whose error is strictly *worse* than
    the best so far. A plateau of equal errors never stops it (0-1 error is flat over long stretches of C when
    the evaluation set is small or the classes many: the fits still improve, and the loss shows it), and the
    best point on a plateau is the one with the lower loss, not the first one reached. ``patience=None`` walks
    the whole grid (used where the curve need not be unimodal, e.g. training error).

    Returns (best_C, path table with columns C, error (fraction), loss, n_iter).
    """
    if patience is not None and int(patience) < 1:
        raise ValueError(f"patience must be >= 1 or None, got {patience!r}")
    rows = []
    best, best_C, worse = (np.inf, np.inf), None, 0
    for c in fitter.grid:
        model = fitter.get(c)
        err = float(np.mean(model.predict(x_eval) != y_eval))
        loss = eval_loss(model, x_eval, y_eval)
        n_iter = int(np.max(getattr(model, "n_iter_", [-1])))
        rows.append({"C": float(c), "error": err, "loss": loss, "n_iter": n_iter})
        key = (err, loss if np.isfinite(loss) else np.inf)
        if key < best:
            best, best_C = key, float(c)
        worse = worse + 1 if err > best[0] else 0
        if patience is not None and worse >= patience:
            break
    return best_C, pd.DataFrame(rows)


def refit_from(estimator: BaseEstimator, start: BaseEstimator, C: float, x: np.ndarray, y: np.ndarray):
    """Fit a clone of ``estimator`` at ``C`` on (x, y), warm-started from ``start``'s coefficients."""
    warm = estimator.get_params().get("warm_start", False)
    final = clone(estimator).set_params(warm_start=True, C=C)
    for attr in ("coef_", "intercept_", "classes_"):
        if hasattr(start, attr):
            setattr(final, attr, copy.deepcopy(getattr(start, attr)))
    model = fit_probe(final, x, y)
    return model.set_params(warm_start=warm) if model is final else model


def tune_probe(
    x: np.ndarray,
    y: np.ndarray,
    *,
    grid: Sequence[float] | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    patience: int = 2,
    estimator: BaseEstimator | None = None,
    **probe_params: Any,
) -> tuple[float, BaseEstimator, pd.DataFrame]:
    """Choose C on a stratified validation part of (x, y), then refit on all of (x, y).

    The validation part (``val_fraction`` of the points, stratified, seeded) is carved from the data
    passed in; the path runs strong -> weak with warm starts and early stopping (see :func:`fit_path`).
    The final model is refitted on all points at the chosen C, warm-started from the validation-path
    solution. ``estimator`` defaults to ``LinearProbe(**probe_params)``.
    Returns (best_C, fitted probe, path table).
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        raise ValueError(f"tune_probe needs samples of at least 2 classes, got only {np.unique(y)[:1].tolist()}")
    g = as_grid(grid)
    est = LinearProbe(**probe_params) if estimator is None else estimator
    n_val = int(round(val_fraction * len(y)))
    n_val = min(max(n_val, 1), len(y) - 1)
    fit_idx, val_idx = stratified_split(y, n_val, seed)
    path = PathFitter(est, x[fit_idx], y[fit_idx], g)
    best_C, table = fit_path(path, x[val_idx], y[val_idx], patience=patience)
    final = refit_from(est, path.get(best_C), best_C, x, y)
    return best_C, final, table
