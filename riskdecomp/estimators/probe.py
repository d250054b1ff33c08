"""The linear probe: L2-regularized multinomial logistic regression, scikit-learn compatible.

The objective and the solvers are in :mod:`riskdecomp.estimators.solvers`; choosing ``C`` on held-out data is in
:mod:`riskdecomp.estimators.selection`.
"""

from __future__ import annotations

from contextlib import nullcontext as _nullcontext

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from riskdecomp.estimators.solvers import (
    PRECISIONS,
    SINGLE_THREAD_BELOW,
    WHITENING,
    column_mean_std,
    device_features,
    feature_scale,
    fit_device,
    needs_centering,
    one_blas_thread,
    solve_lbfgs,
    solve_whitened,
)

#: The one default for feature standardization, used by :class:`LinearProbe`, :func:`tune_probe`,
#: ``decompose``, ``fewshot_errors`` and the CLI: z-score features with the mean/std of the probe's own fitting
#: set. Encoders emit features on wildly different scales (a random-init CNN's are ~1e-3), and a fixed C grid only
#: means the same thing across encoders on a common scale. The model class is unchanged (an affine map of the
#: features is folded into ``coef_``/``intercept_``).
DEFAULT_STANDARDIZE: bool = True


class LinearProbe(ClassifierMixin, BaseEstimator):
    """L2-regularized multinomial logistic regression, scikit-learn compatible (numpy on CPU, PyTorch on GPU).

    Parameters
    ----------
    C : inverse regularization strength, exactly as ``sklearn.linear_model.LogisticRegression``:
        objective ``0.5 ||W||^2 + C * sum_i CE_i``, intercept not penalized.
    standardize : z-score features with mean/std of the training data (folded into ``coef_``); default
        ``DEFAULT_STANDARDIZE`` (True), the same as the CLI's.
    max_iter : maximum L-BFGS iterations.
    tol : stop when max |gradient| of the mean-scaled objective <= tol (scikit-learn's rule).
    device : "auto" (cuda > mps > cpu, but the CPU for problems with n * d * classes below
        ``GPU_MIN_WORK``: there a GPU's per-iteration launch and sync costs exceed the whole CPU fit),
        "cpu", "cuda", ...
    warm_start : start from the previous ``coef_``/``intercept_`` when refitting on the same classes.
    precision : "float32" (default), or "bfloat16" / "float16" for the accelerator path: X is held on the device
        in that type (half the memory) and multiplied with float32 accumulation; the parameters, the softmax and
        L-BFGS stay float32. Tested to change test accuracy by < 0.1 points against float32 (n >= 5k, where the
        rounding of each term averages out of the gradient); the rounding noise of the gradient may exceed a
        tight ``tol``, and the fit then stops when it makes no more progress, with ``converged_`` False. The
        CPU solver is float32 only (an error otherwise).

    There is no ``random_state``: the solver starts from zero (or the warm start) and is deterministic, so a seed
    would change nothing.

    Attributes: ``classes_``, ``coef_`` (n_classes x d, or 1 x d for binary), ``intercept_``,
    ``n_features_in_``, ``n_iter_`` (function evaluations), ``converged_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        standardize: bool = DEFAULT_STANDARDIZE,
        max_iter: int = 500,
        tol: float = 1e-4,
        device: str = "auto",
        warm_start: bool = False,
        precision: str = "float32",
    ):
        self.C = C
        self.precision = precision
        self.standardize = standardize
        self.max_iter = max_iter
        self.tol = tol
        self.device = device
        self.warm_start = warm_start

    def fit(self, X, y):
        """Fit on features X (n, d) and labels y (n,) of any hashable label type; returns self.

        (No ``sample_weight``: every point counts once, as in the risk-decomposition protocol.)
        """
        X, y = validate_data(self, X, y, dtype=[np.float32, np.float64], reset=True)
        check_classification_targets(y)
        if not (np.isfinite(self.C) and self.C > 0):
            raise ValueError(f"C must be a positive finite number, got {self.C!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        classes, y_idx = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"LinearProbe needs samples of at least 2 classes in the data, but the data contains only "
                f"one class: {classes[0]!r}"
            )
        prev = None
        if self.warm_start and hasattr(self, "coef_") and np.array_equal(getattr(self, "classes_", None), classes):
            if self.coef_.shape[1] == X.shape[1]:
                prev = (self.coef_, self.intercept_)
        self.classes_ = classes
        n_out = 1 if len(classes) == 2 else len(classes)
        dev = fit_device(self.device, X.shape[0], X.shape[1], n_out)
        lam = 1.0 / (X.shape[0] * float(self.C))
        if dev.type == "cpu":
            coef, intercept, n_evals, conv = self._fit_cpu(X, y_idx, n_out, lam, prev)
        else:
            coef, intercept, n_evals, conv = self._fit_torch(X, y_idx, n_out, lam, prev, dev)
        self.coef_ = np.ascontiguousarray(coef, dtype=np.float64)
        self.intercept_ = np.asarray(intercept, dtype=np.float64)
        self.n_iter_ = np.array([n_evals])
        self.converged_ = bool(conv)
        return self

    def _fit_cpu(self, X, y_idx, n_out, lam, prev):
        """numpy float32 BLAS, whitened coordinates, hand-written L-BFGS (see :func:`solve_whitened`)."""
        if self.precision != "float32":
            raise ValueError(f"precision={self.precision!r} needs the accelerator path (device='cuda', ...); "
                             "the CPU solver computes in float32")
        n, d = X.shape
        mean, std = column_mean_std(X)
        dscale = feature_scale(mean, std) if self.standardize else np.ones(d)
        offset = mean if needs_centering(mean, std) else None
        if offset is None:
            X32 = np.ascontiguousarray(X, dtype=np.float32)
            sol_mean = mean
        else:  # a centered float32 copy, made in X's own precision (see needs_centering)
            X32 = np.ascontiguousarray(X - offset.astype(X.dtype), dtype=np.float32)
            sol_mean = X32.mean(axis=0, dtype=np.float64)
        evals, V = WHITENING.get(X, X32, sol_mean, dscale)
        if prev is not None:
            W0, b0 = np.asarray(prev[0], dtype=np.float64).T, np.asarray(prev[1], dtype=np.float64)
        else:
            W0, b0 = np.zeros((d, n_out)), np.zeros(n_out)
        small = n * d * n_out < SINGLE_THREAD_BELOW
        with one_blas_thread() if small else _nullcontext():
            memory = None
            saved = getattr(self, "_lbfgs_memory", None)
            if prev is not None and saved is not None and saved[0]() is X and saved[1] == (X.shape, n_out):
                memory = saved[2]  # same data, warm start: reuse the curvature pairs (see solve_whitened)
            if offset is not None:
                b0 = b0 + offset @ W0  # the same model on centered features
            W, b, n_evals, conv, mem = solve_whitened(X32, y_idx, n_out, lam, W0, b0, sol_mean, dscale, evals, V,
                                                       int(self.max_iter), float(self.tol), memory=memory,
                                                       standardized=bool(self.standardize))
            if offset is not None:
                b = b - offset @ W
        import weakref

        self._lbfgs_memory = (weakref.ref(X), (X.shape, n_out), mem)
        return W.T, b, n_evals, conv

    def _fit_torch(self, X, y_idx, n_out, lam, prev, dev):
        """torch on an accelerator: per-feature rescaling, device-side L-BFGS (see :func:`solve_lbfgs`).

        One copy of X on the device, in ``precision`` (:func:`device_features`). The solver works on centered,
        rescaled features X' = (X - mean) / scale (never formed: folded into the logits) with W = V / scale,
        b = b' - (mean / scale) V: an exact reparametrization (the intercept is unpenalized, and the penalty stays
        the original one, ||W||^2 = sum_j ||V_j||^2 / scale_j^2). With ``standardize`` the model itself lives in
        z-scored space (scale = std, penalty ||V||^2)."""
        Xt, mean64, std64, offset = device_features(X, dev, PRECISIONS[self.precision])
        mean, std = mean64.float(), std64.float()
        if self.standardize:
            scale = torch.from_numpy(feature_scale(mean64.cpu().numpy(), std64.cpu().numpy())).float().to(dev)
            pen = None
        else:
            scale = torch.sqrt(std * std + lam)
            pen = scale.pow(-2)
        if prev is not None:
            coef = torch.from_numpy(np.asarray(prev[0], dtype=np.float32)).to(dev)
            W0 = (coef * scale).T.contiguous()
            b0 = torch.from_numpy(np.asarray(prev[1], dtype=np.float32)).to(dev) + coef @ mean
        else:
            W0 = torch.zeros(X.shape[1], n_out, device=dev)
            b0 = torch.zeros(n_out, device=dev)
        yt = torch.from_numpy(y_idx.astype(np.int64)).to(dev)
        tol_v = float(self.tol) * (1.0 if self.standardize else min(1.0, float(scale.median())))
        W, b, n_evals, conv = solve_lbfgs(Xt, yt, n_out, lam, W0, b0, int(self.max_iter), tol_v, pen,
                                           mean=(mean64 - offset).float(), scale=scale)
        coef = (W.T / scale).double().cpu().numpy()
        intercept = b.double().cpu().numpy() - coef @ mean64.cpu().numpy()
        return coef, intercept, n_evals, conv

    def __getstate__(self):
        """Pickles and deep copies leave out the solver's curvature memory (a cache, weakly tied to X)."""
        state = dict(super().__getstate__())  # a copy: object.__getstate__ hands out the live __dict__
        state.pop("_lbfgs_memory", None)
        return state

    def decision_function(self, X) -> np.ndarray:
        """Logits (n, n_classes); for binary problems the single logit of ``classes_[1]`` (n,)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float32, np.float64], reset=False)
        if X.dtype == np.float32:  # float32 features: a float32 matmul (no float64 copy of X), float64 out
            Z = (X @ self.coef_.T.astype(np.float32)).astype(np.float64) + self.intercept_
        else:
            Z = X @ self.coef_.T + self.intercept_
        return Z[:, 0] if Z.shape[1] == 1 else Z

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n, n_classes), columns in ``classes_`` order."""
        Z = self.decision_function(X)
        if Z.ndim == 1:
            p1 = 1.0 / (1.0 + np.exp(-Z))
            return np.stack([1.0 - p1, p1], axis=1)
        Z = Z - Z.max(axis=1, keepdims=True)
        P = np.exp(Z)
        return P / P.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X) -> np.ndarray:
        return np.log(np.clip(self.predict_proba(X), 1e-300, None))

    def predict(self, X) -> np.ndarray:
        """Most probable class label."""
        Z = self.decision_function(X)
        idx = (Z > 0).astype(int) if Z.ndim == 1 else Z.argmax(axis=1)
        return self.classes_[idx]


# --------------------------------------------------------------------------------------------------
# splits and regularization path
