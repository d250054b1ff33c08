"""Pool-based active learning on cached features, and label efficiency (Tamkin et al. 2022).

Protocol: pool = the train features. Features are standardised once with the pool's mean and
std (label-free, legitimate for a pool). Seed set: ``seed_per_class`` random points per class
(class-balanced). Each round: fit the probe on the labelled set, score the unlabelled pool, label
the top ``batch`` points, until ``budget_per_class * C`` labels. After every fit the probe is
evaluated on the test set.

Regularisation is chosen as the few-shot protocol chooses it (:mod:`riskdecomp.estimators.fewshot`),
for every fit (protocol ``ACTIVE_PROTOCOL`` 2): with n labels in K classes, draw a validation set
of ``min(max(ceil(n / K), 5), left)`` unlabelled pool points per class (disjoint from the labelled
set; not counted in n, as few-shot's is not), walk the C grid strong -> weak along the
warm-started path fitted on the labelled set (:func:`riskdecomp.estimators.selection.fit_path`:
0-1 error, ties by log-loss, early stopping) and use the probe at the chosen C. For a
class-balanced labelled set of n = k K points this is the k-shot protocol, so random acquisition
at n labels estimates the k-shot error. The C is chosen on each acquisition's own labelled set: a
C chosen once per size n on a class-balanced draw does not transfer (a very small C, right for a
balanced set, leaves a probe whose unpenalised intercepts predict the majority class of an
imbalanced one: chance accuracy), and a fixed C (protocol 1: C = 1) is the wrong penalty for
some encoders on few labels (e.g. features whose class signal lies in low-variance directions):
their random-acquisition curve fell towards chance while the tuned few-shot probe at the same n
was far above it. A round with no unlabelled point left keeps
the previous round's C.
Pass ``probe_factory`` to use another (fixed) probe instead; its C (when it has one) is reported.

Accuracies are fractions in [0, 1]. ``worst_class_accuracy`` = min over classes of the
per-class recall on the test set. ``C``: the probe's regularisation at that fit.

Acquisitions (higher = labelled first): random; least_confidence 1 - max p; entropy; margin
-(p1 - p2); density = entropy * exp(-knn_10) with knn_10 the mean cosine distance to the 10
nearest pool points (computed once); coreset = k-center greedy on the standardised features
(next point = the unlabelled point farthest from the labelled set, euclidean).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.special import entr

from riskdecomp.estimators.neighbors import knn
from riskdecomp.estimators.probe import DEFAULT_STANDARDIZE, LinearProbe
from riskdecomp.estimators.selection import DEFAULT_GRID, PathFitter, fit_path
from riskdecomp.estimators.solvers import feature_scale
from riskdecomp.utils.errors import FeatureError

ACQUISITIONS = ("random", "least_confidence", "entropy", "margin", "density", "coreset")
#: version of the active-learning protocol, carried by the run record (``active_protocol``): curves of an older
#: one are recomputed by a rerun, without recomputing the record (1: C fixed at 1; 2: C chosen at every fit as
#: few-shot chooses it)
ACTIVE_PROTOCOL = 2
#: stream of the validation draws of AL seed s and acquisition i: ``default_rng([seed, s, _C_STREAM + i])`` (the
#: acquisitions' own draws use [seed, s, 1 + i])
_C_STREAM = 100


def validation_draw(y: np.ndarray, labeled: np.ndarray, per_class: int, rng: np.random.Generator,
                    val_min: int = 5) -> np.ndarray:
    """Indices of a validation set drawn from the unlabelled points (``~labeled``), as the few-shot protocol draws
    it (:func:`riskdecomp.estimators.fewshot.draw_labeled_and_val`): ``min(max(per_class, val_min), left)`` per
    class, ``left`` = the class's unlabelled points."""
    out = []
    for c in np.unique(y):
        rest = rng.permutation(np.flatnonzero((y == c) & ~labeled))
        out.append(rest[: min(max(per_class, val_min), len(rest))])
    return np.sort(np.concatenate(out))


def tuned_fit(x: np.ndarray, y: np.ndarray, labeled: np.ndarray, rng: np.random.Generator, *, grid=None,
              patience: int = 2, standardize: bool = DEFAULT_STANDARDIZE, device: str = "auto",
              fallback_C: float = 1.0):
    """The probe fitted on ``x[labeled]`` at the C the few-shot protocol chooses (see the module docstring), and that
    C. Without an unlabelled point to validate on, the probe at ``fallback_C`` (the grid value nearest to it)."""
    g = np.sort(DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float).ravel())
    n, k = int(labeled.sum()), len(np.unique(y))
    val = validation_draw(y, labeled, -(-n // k), rng)
    path = PathFitter(LinearProbe(standardize=standardize, device=device), x[labeled], y[labeled], g)
    if len(val):
        C, _ = fit_path(path, x[val], y[val], patience=patience)
    else:
        C = float(g[np.argmin(np.abs(np.log(g) - np.log(fallback_C)))])
    return path.get(C), C


def seed_set(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` random indices of every class (class-balanced seed set); all of a rare class's members when
    it has fewer than ``per_class`` pool points (a rare class does not fail the model)."""
    out = []
    for c in np.unique(y):
        members = np.nonzero(y == c)[0]
        out.append(rng.choice(members, size=min(per_class, len(members)), replace=False))
    return np.concatenate(out)


def _acquire(name: str, proba: np.ndarray | None, unl: np.ndarray, b: int, rng: np.random.Generator,
             density: np.ndarray | None) -> np.ndarray:
    """Positions (into ``unl``) of the b points to label next, for probability-based rules."""
    if name == "random":
        return rng.choice(len(unl), size=b, replace=False)
    p = proba
    if name == "least_confidence":
        s = 1.0 - p.max(1)
    elif name == "entropy":
        s = entr(p).sum(1)
    elif name == "margin":
        top2 = -np.sort(-p, axis=1)[:, :2]
        s = -(top2[:, 0] - top2[:, 1])
    elif name == "density":
        s = entr(p).sum(1) * density[unl]
    else:
        raise FeatureError(f"unknown acquisition {name!r}; use one of {ACQUISITIONS}")
    # highest first; random tie-break so equal scores do not follow pool order
    return np.lexsort((rng.random(len(s)), -s))[:b]


def _coreset_pick(x: np.ndarray, mind: np.ndarray, labeled_mask: np.ndarray, b: int) -> tuple[list[int], np.ndarray]:
    """k-center greedy: repeatedly take the unlabelled point with the largest distance to the labelled set.

    ``mind`` = distance of every pool point to the labelled set; returns picks and the updated
    distances (labelled points at -inf)."""
    picks = []
    mind = mind.copy()
    mind[labeled_mask] = -np.inf
    for _ in range(b):
        j = int(np.argmax(mind))
        picks.append(j)
        mind = np.minimum(mind, np.linalg.norm(x - x[j], axis=1))
        mind[j] = -np.inf
    return picks, mind


def _evaluate(probe, x_test: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    pred = probe.predict(x_test)
    correct = pred == y_test
    per_class = [correct[y_test == c].mean() for c in np.unique(y_test)]
    return float(correct.mean()), float(min(per_class))


def run_active_learning(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    acquisitions: Sequence[str] = ACQUISITIONS,
    seeds: int = 5,
    seed_per_class: int = 2,
    batch: int | None = None,
    budget_per_class: int = 50,
    probe_factory: Callable[[], object] | None = None,
    seed: int = 0,
    grid=None,
    patience: int = 2,
    standardize: bool = DEFAULT_STANDARDIZE,
    device: str = "auto",
) -> pd.DataFrame:
    """Learning curves: tidy (acquisition, seed, n_labels, accuracy, worst_class_accuracy, C).

    ``batch`` defaults to max(10, K) for K classes; the total budget is ``budget_per_class * K`` labels
    (the last round is truncated to hit it exactly). Every acquisition of one seed starts from the
    same seed set (paired comparison). Accuracies are fractions in [0, 1]. Every fit is a
    ``LinearProbe(standardize=standardize, device=device)`` at the C of :func:`tuned_fit` (``grid``,
    ``patience``: as in few-shot), unless ``probe_factory`` gives a fixed probe (refitted, warm-started,
    every round).
    """
    for name in acquisitions:
        if name not in ACQUISITIONS:
            raise FeatureError(f"unknown acquisition {name!r}; use one of {ACQUISITIONS}")
    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train)
    mu, sd = x.mean(0), x.std(0)
    sd = feature_scale(mu, sd)  # 1 for a (near-)constant column
    x = (x - mu) / sd
    xt = (np.asarray(x_test, dtype=np.float64) - mu) / sd
    x32, xt = np.ascontiguousarray(x, dtype=np.float32), np.ascontiguousarray(xt, dtype=np.float32)  # the probes'
    yt = np.asarray(y_test)
    n_c = len(np.unique(y))
    b = max(10, n_c) if batch is None else int(batch)
    total = min(budget_per_class * n_c, len(y))
    if seed_per_class * n_c > total:
        raise FeatureError(f"seed set of {seed_per_class * n_c} labels exceeds the budget of {total}")
    tuned = probe_factory is None

    density = None
    if "density" in acquisitions:
        kk = min(10, len(x) - 1)
        dist, _ = knn(x, x, kk, metric="cosine", exclude_self=np.arange(len(x)))
        density = np.exp(-dist.mean(1))
    sq = None
    rows = []
    for s in range(seeds):
        start = seed_set(y, seed_per_class, np.random.default_rng([seed, s]))
        for name in acquisitions:
            rng = np.random.default_rng([seed, s, ACQUISITIONS.index(name) + 1])
            labeled = np.zeros(len(y), dtype=bool)
            labeled[start] = True
            probe = None if tuned else probe_factory()
            vrng, C = np.random.default_rng([seed, s, _C_STREAM + ACQUISITIONS.index(name)]), 1.0
            if name == "coreset":
                sq = np.full(len(x), np.inf)
                for j in start:
                    sq = np.minimum(sq, np.linalg.norm(x - x[j], axis=1))
            while True:
                n_lab = int(labeled.sum())
                if tuned:
                    probe, C = tuned_fit(x32, y, labeled, vrng, grid=grid, patience=patience, standardize=standardize,
                                         device=device, fallback_C=C)
                else:
                    probe.fit(x32[labeled], y[labeled])
                    C = float(getattr(probe, "C", np.nan))
                acc, worst = _evaluate(probe, xt, yt)
                rows.append((name, s, n_lab, acc, worst, C))
                if n_lab >= total:
                    break
                take = min(b, total - n_lab)
                unl = np.nonzero(~labeled)[0]
                if name == "coreset":
                    picks, sq = _coreset_pick(x, sq, labeled, take)
                    labeled[picks] = True
                    continue
                proba = None if name == "random" else probe.predict_proba(x32[unl])
                labeled[unl[_acquire(name, proba, unl, take, rng, density)]] = True
    return pd.DataFrame(rows, columns=["acquisition", "seed", "n_labels", "accuracy", "worst_class_accuracy", "C"])


def labels_to_reach(n_labels: np.ndarray, accuracy: np.ndarray, target: float) -> float:
    """n(a): smallest number of labels at which the curve reaches ``target``.

    Linear interpolation between the evaluated budgets; the first budget if already reached
    there; NaN if never reached.
    """
    n = np.asarray(n_labels, dtype=np.float64)
    a = np.asarray(accuracy, dtype=np.float64)
    hit = np.nonzero(a >= target)[0]
    if hit.size == 0:
        return float("nan")
    j = int(hit[0])
    if j == 0:
        return float(n[0])
    return float(n[j - 1] + (target - a[j - 1]) / (a[j] - a[j - 1]) * (n[j] - n[j - 1]))


def label_efficiency(
    curves: pd.DataFrame,
    full_accuracy: float | None = None,
    fractions: Sequence[float] = (0.9, 0.95),
    baseline: str = "random",
) -> pd.DataFrame:
    """LE(a) = n_random(a) / n_m(a) on seed-averaged curves, per acquisition m != random.

    Targets: ``"max"`` = the largest LE over accuracies reached by both curves (the maximum of
    a ratio of piecewise-linear inverses lies at a breakpoint, so the curves' own accuracy
    values are the candidates); ``"{f:.0%} of full"`` for each fraction f of ``full_accuracy``
    (accuracy of the probe trained on all labels; NaN LE if a curve never reaches it).
    Columns: acquisition, target, accuracy, labels_random, labels_method, le.
    """
    mean = curves.groupby(["acquisition", "n_labels"], as_index=False)["accuracy"].mean()
    if baseline not in set(mean["acquisition"]):
        raise FeatureError(f"label efficiency needs the {baseline!r} acquisition in the curves")
    base = mean[mean["acquisition"] == baseline].sort_values("n_labels")
    bn, ba = base["n_labels"].to_numpy(), base["accuracy"].to_numpy()
    rows = []
    for name, g in mean.groupby("acquisition", sort=False):
        if name == baseline:
            continue
        g = g.sort_values("n_labels")
        mn, ma = g["n_labels"].to_numpy(), g["accuracy"].to_numpy()
        top = min(ba.max(), ma.max())
        cands = np.unique(np.r_[ba, ma])
        cands = cands[cands <= top]
        best = (np.nan, np.nan, np.nan, np.nan)
        for a in cands:
            nr, nm = labels_to_reach(bn, ba, a), labels_to_reach(mn, ma, a)
            if nm > 0 and (np.isnan(best[3]) or nr / nm > best[3]):
                best = (a, nr, nm, nr / nm)
        rows.append((name, "max", *best))
        if full_accuracy is not None:
            for f in fractions:
                a = f * full_accuracy
                nr, nm = labels_to_reach(bn, ba, a), labels_to_reach(mn, ma, a)
                rows.append((name, f"{f:.0%} of full", a, nr, nm, nr / nm if nm > 0 else np.nan))
    return pd.DataFrame(rows, columns=["acquisition", "target", "accuracy", "labels_random", "labels_method", "le"])
