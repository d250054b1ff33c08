"""The SSL risk decomposition (Dubois et al., ICML 2023) on feature arrays, with bootstrap CIs.

The protocol, the formulas and what the CIs cover are written down in ``docs/protocol.md``; in short:

Raw errors (0-1 error in percent), each from probe fits:

- ``err_ref_train_train``: probe fitted on D_tr with the supervised reference's features, scored on D_tr;
- ``err_train_train``: probe fitted on D_tr, scored on D_tr;
- ``err_heldout``: train points scored by a probe that did not see them. ``holdout="crossfit"`` (the default
  below ``CROSSFIT_MAX_TRAIN`` train points): D_tr cut into ``n_folds`` stratified folds, each fold S_k scored
  by a probe fitted on D_tr \\ S_k, so every train point is held out once and the errors are averaged;
  ``holdout="single"`` (the paper's protocol, the default above): one stratified subset S of ``n_sub`` points;
- ``err_test``: fitted on D_tr, scored on D_te;
- ``err_sub_test``: the held-out probes (fitted on D_tr \\ S_k) scored on D_te, averaged over folds;
- (alternative) ``err_union``: fitted on D_tr u D_te, scored on D_te.

Components::

    approx    = err_ref_train_train                      (NaN without a reference: merged into usability)
    usability = err_train_train - err_ref_train_train    (= err_train_train without a reference)
    probe_gen = err_heldout - err_train_train
    enc_gen   = err_test - err_heldout
    agg_risk  = approx + usability + probe_gen + enc_gen (computed as this sum, so the identity is exact;
                it equals err_test up to float rounding)
    enc_gen_size_gap = err_sub_test - err_test   (the part of enc_gen that is only the smaller training set of
                the held-out probes: not a component, a diagnostic; enc_gen - enc_gen_size_gap is the
                encoder's generalization at equal probe training size)
    alternative: enc_gen_alt = err_union - err_train_train, probe_gen_alt = err_test - err_union

Regularization (never looks at D_te labels except for the alternative err_union fit):

- train_train fits (SSL, reference, union): C minimizing *training* error (ties: lower training loss) over the
  whole warm-started path (strong -> weak): training error need not fall monotonically in C, so no early stop;
- err_heldout: per fold, C chosen on a stratified validation part of D_tr \\ S_k, refit on all of D_tr \\ S_k
  (warm-started from the validation-path solution at that C);
- err_test: C chosen on a stratified validation part of D_tr, refit on all of D_tr (the train_train
  path already holds that fit: it is reused).

Bootstrap CIs (``<name>_lo``/``_hi``: 2.5 / 97.5 percentiles over ``n_boot`` replicates). **They cover the
resampling of the evaluation points only** -- the finite train and test sets that the errors are averaged over --
and NOT the randomness of the probe fits (they are not refitted per replicate), the choice of S / the folds,
the choice of C, nor the encoder's pretraining seed (run several seeds for that). Two resampling units:

- D_tr: each train point carries its losses under err_train_train, err_ref_train_train and err_heldout (S is a
  subset of D_tr: with a single S the other points carry no held-out loss), so one resample of D_tr moves all
  three together, as it should (their differences, usability and probe_gen, get the narrower CIs of paired
  errors);
- D_te: each test point carries err_test, err_sub_test and err_union.

D_tr and D_te are resampled independently. Resampling n points with replacement gives counts per distinct loss
pattern ~ Multinomial(n, pattern frequencies), so the bootstrap is drawn exactly in O(B x patterns) from those
counts (:func:`boot_means`); a mean over a subset (S) is the resampled sum over its points divided by the
resampled number of its points.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from riskdecomp.estimators.probe import DEFAULT_STANDARDIZE, LinearProbe
from riskdecomp.estimators.selection import (
    PathFitter,
    as_grid,
    fit_path,
    refit_from,
    stratified_split,
)
from riskdecomp.utils.errors import FeatureError, RiskdecompError, failing_stage
from riskdecomp.utils.schema import ALT_COMPONENTS, COMPONENTS
from riskdecomp.utils.validation import CHUNK_ROWS, check_features, check_int

RAW_ERRORS = ("err_train_train", "err_heldout", "err_test", "err_ref_train_train", "err_sub_test")
HOLDOUTS = ("auto", "crossfit", "single")
#: ``holdout="auto"`` cross-fits below this many train points and holds out one S above. Below it one S of
#: n_sub <= 20% of D_tr (<= 2,000 points) gives err_heldout a binomial standard error of ~1 point or more at 20-50%
#: error, plus the luck of which points form S; cross-fitting scores all of D_tr at n_folds x the held-out cost.
#: Above it one S already has >= 2,000 points and the extra fits cost more than they bring.
CROSSFIT_MAX_TRAIN = 10_000
DEFAULT_FOLDS = 5


class Decomposition(dict):
    """One model's decomposition: a flat dict of numbers plus the fitted err_test probe.

    Attributes: ``test_probe`` (probe fitted on D_tr at ``C_test``), ``test_pred_proba`` (its
    n_test x K class probabilities on D_te, columns in ``test_probe.classes_`` order).
    """

    test_probe: BaseEstimator | None = None
    test_pred_proba: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        """One-row DataFrame of all the scalar entries."""
        return pd.DataFrame([dict(self)])




def _default_n_sub(n_train: int, n_test: int) -> int:
    return int(min(n_test, int(0.2 * n_train)))


def _errors(model: BaseEstimator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point 0/1 losses (bool array)."""
    return np.asarray(model.predict(x) != y)


def boot_means(losses: np.ndarray, B: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates (B, m) of the column means of ``losses`` (n points x m errors; NaN = the point does
    not count for that error), all columns resampled with the SAME indices.

    Exact and O(B x patterns): the n rows fall into P distinct patterns with frequencies f; a resample's pattern
    counts are Multinomial(n, f); a column's replicate is sum(count x value) / sum(count) over the patterns where
    the column is defined (NaN if none drew).
    """
    L = np.asarray(losses, dtype=float)
    if L.ndim == 1:
        L = L[:, None]
    n = len(L)
    defined = ~np.isnan(L)
    key = np.where(defined, L, -1.0)
    patterns, inverse = np.unique(key, axis=0, return_inverse=True)
    freq = np.bincount(inverse.ravel(), minlength=len(patterns)) / n
    counts = rng.multinomial(n, freq, size=B).astype(float)  # (B, P)
    pdef = patterns >= 0
    num = counts @ np.where(pdef, patterns, 0.0)
    den = counts @ pdef.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _components(raw: dict[str, np.ndarray | float], has_ref: bool, alternative: bool) -> dict:
    """Components from raw errors (scalars or bootstrap vectors), in percent; exact-sum agg_risk."""
    tt, ho, te = raw["err_train_train"], raw["err_heldout"], raw["err_test"]
    out: dict = {}
    if has_ref:
        ref = raw["err_ref_train_train"]
        out["approx"] = ref
        out["usability"] = tt - ref
    else:
        out["approx"] = np.full_like(np.asarray(tt, dtype=float), np.nan) if np.ndim(tt) else float("nan")
        out["usability"] = tt
    out["probe_gen"] = ho - tt
    out["enc_gen"] = te - ho
    parts = ([out["approx"]] if has_ref else []) + [out["usability"], out["probe_gen"], out["enc_gen"]]
    agg = parts[0]
    for p in parts[1:]:
        agg = agg + p
    out["agg_risk"] = agg
    out["enc_gen_size_gap"] = raw["err_sub_test"] - te
    if alternative:
        un = raw["err_union"]
        out["probe_gen_alt"] = te - un
        out["enc_gen_alt"] = un - tt
    return out


class _RowBuffer:
    """The one working copy of the train features (``dtype``, e.g. float32 from a float16 memory-mapped cache file):
    :meth:`arrange` gathers the source rows (in chunks, so no full-size temporary of either dtype) into this single
    buffer in the order a phase needs, so that every row subset it fits or scores on is a contiguous slice -- a
    view, never a fancy-indexed copy. Peak memory of :func:`decompose` is then ~1x the train matrix in ``dtype``
    (+ the test matrix), whatever the number of subsets; the source is only read."""

    def __init__(self, src: np.ndarray, dtype):
        self.src = src
        self.buf = np.empty(src.shape, dtype=dtype)

    def arrange(self, *parts: np.ndarray) -> list[np.ndarray]:
        """Fill the buffer with the source rows ``parts[0]``, then ``parts[1]``, ... (index arrays covering
        at most all rows); return one view per part."""
        order = np.concatenate(parts)
        for i in range(0, len(order), CHUNK_ROWS):
            self.buf[i:i + CHUNK_ROWS] = self.src[order[i:i + CHUNK_ROWS]]
        bounds = np.cumsum([0] + [len(p) for p in parts])
        return [self.buf[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _choose_C(est, x_fit, y_fit, x_val, y_val, grid, patience):
    """(C with the lowest error on (x_val, y_val) along the warm-started path fitted on (x_fit, y_fit), the path's
    probe at that C)."""
    path = PathFitter(est, x_fit, y_fit, grid)
    C, _ = fit_path(path, x_val, y_val, patience=patience)
    return C, path.get(C)


def _holdout_folds(y: np.ndarray, holdout: str, n_folds: int, n_sub: int, seed: int) -> list[np.ndarray]:
    """The held-out sets S_k (sorted train indices): ``n_folds`` stratified folds covering D_tr, or one S."""
    if holdout == "single":
        return [stratified_split(y, n_sub, seed)[1]]
    import warnings

    from sklearn.model_selection import KFold, StratifiedKFold

    with warnings.catch_warnings():  # a class with fewer members than folds: it is missing from some folds
        warnings.filterwarnings("ignore", message="The least populated class")
        try:
            splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
            folds = [np.sort(out) for _, out in splits]
        except ValueError:
            folds = [np.sort(out) for _, out in KFold(n_folds, shuffle=True, random_state=seed).split(y)]
    return folds


def decompose(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    reference: tuple[np.ndarray, np.ndarray] | None = None,
    seed: int = 0,
    n_sub: int | None = None,
    grid: Sequence[float] | None = None,
    n_boot: int = 1000,
    alternative: bool = False,
    device: str = "auto",
    standardize: bool = DEFAULT_STANDARDIZE,
    val_fraction: float = 0.2,
    patience: int = 2,
    probe: BaseEstimator | None = None,
    holdout: str = "auto",
    n_folds: int = DEFAULT_FOLDS,
) -> Decomposition:
    """Risk decomposition of one encoder's features (percent errors, bootstrap 95% CIs over the evaluation
    points only: see the module docstring and ``docs/protocol.md``).

    ``reference`` = (x_ref_train, y_ref_train): the supervised reference encoder's features of the
    same train points (same order) or None (then ``approx`` is NaN and merged into ``usability``). ``reference``
    whose first array IS ``x_train`` (an encoder that is its own reference, as the runner passes it): its
    train->train fit is the reference fit, so ``err_train_train == err_ref_train_train`` and usability is exactly 0
    (two fits of one problem with the rows in another order would differ by float rounding, ~0.02 points).
    ``holdout``: how err_heldout is estimated: ``"crossfit"`` (``n_folds`` folds, every train point held out
    once), ``"single"`` (one stratified S of ``n_sub`` points, default min(|D_te|, 20% |D_tr|): the paper's
    protocol) or ``"auto"`` (crossfit up to ``CROSSFIT_MAX_TRAIN`` train points, single above).
    ``probe`` (default ``LinearProbe(standardize, device)``) may be any sklearn classifier with ``C`` and
    ``warm_start`` parameters.

    Result keys: the components, ``agg_risk``, the raw errors, ``enc_gen_size_gap``, each with ``_lo``/``_hi``;
    ``<component>_clipped``; ``C_*`` (``C_heldout``: the median over folds); ``holdout`` ("crossfit"/"single"),
    ``holdout_folds`` (1 for single), ``n_sub`` (points per held-out set: |S|, or the mean fold size; the
    held-out probes are fitted on n_train - n_sub points),
    ``n_train``, ``n_test``, ``n_classes``, ``n_boot``, ``seed``, ``approx_merged``.
    """
    own_reference = reference is not None and reference[0] is x_train
    x_train, y_train = check_features(x_train, y_train, "x_train")
    x_test, y_test = check_features(x_test, y_test, "x_test")
    seed, n_boot = check_int(seed, "seed", 0), check_int(n_boot, "n_boot", 0)
    patience = check_int(patience, "patience", 1)
    if not 0 < float(val_fraction) < 1:
        raise RiskdecompError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    if holdout not in HOLDOUTS:
        raise RiskdecompError(f"holdout must be one of {', '.join(HOLDOUTS)}, got {holdout!r}")
    if x_train.shape[1] != x_test.shape[1]:
        raise FeatureError(
            f"x_test has {x_test.shape[1]} features but x_train has {x_train.shape[1]}"
        )
    train_classes = np.unique(y_train)
    missing = np.setdiff1d(np.unique(y_test), train_classes)
    if missing.size:
        raise FeatureError(f"y_test has classes absent from y_train: {missing[:5].tolist()}")
    if len(train_classes) < 2:
        raise FeatureError(f"y_train has a single class ({train_classes[0]}); need at least 2")
    if reference is not None:
        x_ref, y_ref = check_features(reference[0], reference[1], "reference x_train")
        if x_ref.shape[0] != x_train.shape[0] or not np.array_equal(y_ref, y_train):
            raise FeatureError(
                "reference: features must cover the same train points in the same order "
                f"({x_ref.shape[0]} rows vs {x_train.shape[0]}; labels equal: {np.array_equal(y_ref, y_train)})"
            )
    g = as_grid(grid)
    n_tr, n_te = len(y_train), len(y_test)
    if holdout == "auto":
        holdout = "crossfit" if n_tr <= CROSSFIT_MAX_TRAIN else "single"
    if holdout == "crossfit":
        n_folds = check_int(n_folds, "n_folds", 2)
        if n_folds > n_tr // 2:
            raise RiskdecompError(f"n_folds={n_folds} is too many for {n_tr} train points (at most {n_tr // 2})")
    if n_sub is None:
        n_sub = _default_n_sub(n_tr, n_te)
    n_sub = int(n_sub)
    if not 1 <= n_sub <= n_tr - 2:
        raise FeatureError(f"n_sub={n_sub} must be between 1 and n_train - 2 = {n_tr - 2}")
    est = probe if probe is not None else LinearProbe(standardize=standardize, device=device)
    # the probes compute in float32 (LinearProbe) or in the features' own precision (any other classifier); float16
    # (the feature cache's default) is read into float32 working copies
    work = np.float32 if probe is None else np.result_type(x_train.dtype, np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=work)

    def n_val(n: int) -> int:
        return min(max(int(round(val_fraction * n)), 1), n - 1)

    res = Decomposition()
    # per-point losses (float, NaN = the point does not count for that error), one table per resampling unit
    train_loss: dict[str, np.ndarray] = {}
    test_loss: dict[str, np.ndarray] = {}
    # Every fit below reads the train features from ONE working buffer, rearranged per phase so that its row subsets
    # (D_tr \ S_k's fitting and validation parts, S_k; D_tr's) are slices (see _RowBuffer). A fit's rows in another
    # order are the same problem: only float rounding differs.
    rows = _RowBuffer(x_train, work)
    folds = _holdout_folds(y_train, holdout, n_folds, n_sub, seed)

    def fold_parts(k: int, sub_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        comp_idx = np.setdiff1d(np.arange(n_tr), sub_idx, assume_unique=True)
        fit_i, val_i = stratified_split(y_train[comp_idx], n_val(len(comp_idx)), seed + 1 + 7919 * k)
        return comp_idx[fit_i], comp_idx[val_i], sub_idx

    # err_train_train: best training error along the path on D_tr (rows in fold 0's order, which the first held-out
    # fit reuses). The whole grid is fitted here (patience=None): err_test later takes its C_test fit from this path.
    parts = fold_parts(0, folds[0])
    views = rows.arrange(*parts)
    order = np.concatenate(parts)
    x_all, y_all = rows.buf, y_train[order]
    tr_path = PathFitter(est, x_all, y_all, g)
    with failing_stage("probe fit on train (err_train_train)"):
        C_tt, _ = fit_path(tr_path, x_all, y_all, patience=None)
    tt = np.empty(n_tr)
    tt[order] = _errors(tr_path.get(C_tt), x_all, y_all)
    train_loss["err_train_train"] = tt
    res["C_train_train"] = C_tt

    # err_heldout: each S_k scored by a probe fitted on D_tr \ S_k (C chosen on a validation part of it); the
    # same probes scored on D_te give err_sub_test.
    held = np.full(n_tr, np.nan)
    sub_test = np.zeros(n_te)
    C_folds = []
    for k, sub_idx in enumerate(folds):
        if k:  # fold 0's rows are in place already
            parts = fold_parts(k, sub_idx)
            views = rows.arrange(*parts)
        (fit_idx, val_idx, _), (x_fit, x_val, x_sub) = parts, views
        with failing_stage(f"held-out probe fit (fold {k + 1} of {len(folds)})"):
            C_k, val_probe = _choose_C(est, x_fit, y_train[fit_idx], x_val, y_train[val_idx], g, patience)
            n_c = len(fit_idx) + len(val_idx)  # D_tr \ S_k = the fitting + validation rows, a prefix of the buffer
            ho_probe = refit_from(est, val_probe, C_k, rows.buf[:n_c], y_train[np.concatenate([fit_idx, val_idx])])
        del val_probe
        held[sub_idx] = _errors(ho_probe, x_sub, y_train[sub_idx])
        sub_test += _errors(ho_probe, x_test, y_test) / len(folds)
        C_folds.append(C_k)
        del ho_probe
    train_loss["err_heldout"] = held
    test_loss["err_sub_test"] = sub_test
    res["C_heldout"] = float(np.median(C_folds)) if len(C_folds) % 2 else float(sorted(C_folds)[len(C_folds) // 2])

    # err_test: C chosen on a validation part of D_tr, refit on D_tr (= the train path's fit at that C)
    fit_i, val_i = stratified_split(y_train, n_val(n_tr), seed + 2)
    x_fit, x_val = rows.arrange(fit_i, val_i)
    with failing_stage("probe fit for err_test"):
        C_te, _ = _choose_C(est, x_fit, y_train[fit_i], x_val, y_train[val_i], g, patience)
    test_probe = tr_path.get(C_te)
    test_loss["err_test"] = _errors(test_probe, x_test, y_test).astype(float)
    res["C_test"] = C_te
    del rows, views, tr_path, x_all, x_fit, x_val, x_sub  # the working buffer: the reference / union fits need their own

    if reference is not None:
        x_ref = np.ascontiguousarray(x_ref, dtype=work)
        ref_path = PathFitter(est, x_ref, y_train, g)
        with failing_stage("reference probe fit on train"):
            C_ref, _ = fit_path(ref_path, x_ref, y_train, patience=None)
        train_loss["err_ref_train_train"] = _errors(ref_path.get(C_ref), x_ref, y_train).astype(float)
        res["C_ref_train_train"] = C_ref
        if own_reference:  # one fit, the same one another encoder's approx reads: usability is exactly 0
            train_loss["err_train_train"] = train_loss["err_ref_train_train"]
            res["C_train_train"] = C_ref
        del x_ref, ref_path
    if alternative:
        x_u = np.concatenate([x_train, x_test], dtype=work)
        y_u = np.concatenate([y_train, y_test])
        un_path = PathFitter(est, x_u, y_u, g)
        with failing_stage("probe fit on train + test (alternative)"):
            C_un, _ = fit_path(un_path, x_u, y_u, patience=None)
        test_loss["err_union"] = _errors(un_path.get(C_un), x_test, y_test).astype(float)
        res["C_union"] = C_un
        del x_u, un_path

    has_ref = reference is not None
    raw = {k: 100.0 * float(np.nanmean(v)) for part in (train_loss, test_loss) for k, v in part.items()}
    if not has_ref:
        raw["err_ref_train_train"] = float("nan")
    point = _components(raw, has_ref, alternative)
    res.update(point)
    raw_names = (*RAW_ERRORS, *(("err_union",) if alternative else ()))
    res.update({k: raw[k] for k in raw_names})

    # bootstrap: D_tr and D_te resampled independently, every error on one set with the same indices
    rng = np.random.default_rng(seed)
    B = n_boot
    boot: dict[str, np.ndarray] = {}
    if B > 0:
        for part in (train_loss, test_loss):
            names = list(part)
            reps = boot_means(np.column_stack([part[k] for k in names]), B, rng)
            boot.update({k: 100.0 * reps[:, j] for j, k in enumerate(names)})
        if not has_ref:
            boot["err_ref_train_train"] = np.full(B, np.nan)
        boot.update(_components(boot, has_ref, alternative))
    for name in (*COMPONENTS, "agg_risk", "enc_gen_size_gap", *(ALT_COMPONENTS if alternative else ()), *raw_names):
        if B > 0 and not np.all(np.isnan(boot[name])):
            lo, hi = np.nanpercentile(boot[name], [2.5, 97.5])
        else:
            lo = hi = float("nan")
        res[f"{name}_lo"], res[f"{name}_hi"] = float(lo), float(hi)
    for name in (*COMPONENTS, *(ALT_COMPONENTS if alternative else ())):
        v = res[name]
        res[f"{name}_clipped"] = v if np.isnan(v) else max(float(v), 0.0)
    res["approx_merged"] = not has_ref
    res["holdout"], res["holdout_folds"] = holdout, len(folds)
    res["n_train"], res["n_test"] = n_tr, n_te
    res["n_sub"] = int(round(np.mean([len(f) for f in folds])))  # the held-out probes train on n_train - n_sub
    res["n_classes"] = int(len(train_classes))
    res["n_boot"] = B
    res["seed"] = int(seed)
    res.test_probe = test_probe
    res.test_pred_proba = test_probe.predict_proba(x_test)
    return res
