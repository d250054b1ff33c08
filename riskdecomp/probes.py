"""Linear probes: L2 multinomial logistic regression in PyTorch, and its regularization path.

The probe minimizes exactly scikit-learn's ``LogisticRegression`` objective (same meaning of ``C``)::

    0.5 * ||W||_F^2 + C * sum_i CE(softmax(W x_i + b), y_i)        (intercept b not penalized)

Internally the objective is divided by ``n * C`` (same minimizer, better conditioned, the scaling
scikit-learn's lbfgs uses too)::

    f(W, b) = mean_i CE_i + (1 / (2 n C)) ||W||^2

and solved full-batch in float32, in one fused loss+gradient pass per evaluation without autograd (two
matmuls: ``Z = X W + b`` and ``X^T (softmax(Z) - Y)``). The stopping rule mirrors scikit-learn's:
max |gradient of f| <= ``tol``.

- On CPU (:func:`_solve_whitened`): an exact change of variables to PCA-whitened, centered coordinates,
  ``W = diag(1/dscale) V diag(1/s) U``, ``s_j^2 = lambda_j + K lam`` (``V, lambda`` from the covariance of
  a row sample, cached per feature array across the regularization path), in which the penalty stays
  diagonal and the data term is close to isotropic; a hand-written L-BFGS (Armijo backtracking; the
  problem is strictly convex) on numpy's float32 BLAS, with no copy of ``X``. On correlated SSL-like
  features this needs ~5-10x fewer evaluations than L-BFGS on raw or z-scored features. Small problems
  (n d K < 4M) run their BLAS on one thread.
- On an accelerator (:func:`_solve_lbfgs`): per-feature rescaling folded into the logits, ``X`` put on the
  device once per fit (optionally in bfloat16/float16, ``precision``), the loss/gradient pass in row chunks
  (bounded memory at ImageNet size), and an L-BFGS whose every decision is taken on the device (no host
  synchronization per iteration; the stopping rule is read back once per ``SYNC_EVERY`` iterations).

Binary problems use one weight vector (logit ``z = w.x + b``, sigmoid), as scikit-learn does, so
``C`` keeps the same meaning there too.

Regularization selection (:func:`tune_probe`, :func:`fit_path`): a log grid of ``C`` walked from
strong to weak regularization with warm starts, evaluating each fit on held-out data (0-1 error, ties broken
by the lower log-loss) and stopping once the error has been strictly worse than the best for ``patience``
consecutive grid points (never on a plateau of equal errors).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext as _nullcontext
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.special import expit
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.model_selection import StratifiedShuffleSplit
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .device import resolve_device

#: Default regularization grid: 10 values of C log-spaced over 1e-4 .. 1e2 (sklearn's meaning of C,
#: i.e. the penalty relative to the *sum* of losses). For n training points the effective weight decay
#: on the mean loss is 1/(n C): with n = 50,000 this spans 0.2 .. 2e-7 (strong to essentially none);
#: with a few-shot set of n = 10 it spans 1e3 .. 1e-3.
DEFAULT_GRID: np.ndarray = np.logspace(-4, 2, 10)

#: The one default for feature standardization, used by :class:`LinearProbe`, :func:`tune_probe`,
#: ``decompose``, ``fewshot_errors`` and the CLI: z-score features with the mean/std of the probe's own fitting
#: set. Encoders emit features on wildly different scales (a random-init CNN's are ~1e-3), and a fixed C grid only
#: means the same thing across encoders on a common scale. The model class is unchanged (an affine map of the
#: features is folded into ``coef_``/``intercept_``).
DEFAULT_STANDARDIZE: bool = True


#: below this many n * d * classes, ``device="auto"`` fits on the CPU: each L-BFGS iteration on a GPU costs
#: ~100 small kernel launches (the two-loop recursion over the ring buffer, device-side decisions: ~0.3-0.5 ms),
#: which is what 2 CPU cores need for a 4M-multiply-add fit evaluation (e.g. digits: 1,400 x 64 x 10 = 0.9M;
#: the 50k x 512 x 10 benchmark, 256M, goes to the GPU)
GPU_MIN_WORK = 1 << 22


def fit_device(device: str | torch.device, n: int, d: int, n_out: int) -> torch.device:
    """Where a fit of n points x d features x ``n_out`` outputs runs: ``resolve_device(device)``, except that
    ``"auto"`` keeps problems below ``GPU_MIN_WORK`` on the CPU."""
    dev = torch.device(resolve_device(device))
    if isinstance(device, str) and device == "auto" and n * d * n_out < GPU_MIN_WORK:
        return torch.device("cpu")
    return dev




#: rows of X per chunk of the torch path's loss/gradient pass: the logits and softmax temporaries of one chunk
#: hold about this many elements (x 4 bytes, a few copies), whatever n is: at 1.28M x 1000 classes the unchunked
#: logits alone would take 5 GB; chunks of 32k rows take 128 MB.
LOGIT_CHUNK_ELEMS = 1 << 25
#: the torch L-BFGS loop reads a value back from the device (a host synchronization) once per this many
#: iterations, for its stopping rules; between those reads every decision is taken on the device.
SYNC_EVERY = 10
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` as float32: float32 inputs as they are; reduced-precision inputs (bf16/fp16 X and a cast of the
    float32 operand) with float32 accumulation (CUDA's ``out_dtype``; elsewhere the product is rounded once to the
    reduced type and converted)."""
    if a.dtype in (torch.float32, torch.float64):
        return a @ b.to(a.dtype)
    b = b.to(a.dtype)
    if a.is_cuda:
        try:
            return torch.mm(a, b, out_dtype=torch.float32)
        except (TypeError, RuntimeError):  # pragma: no cover - torch without mm(out_dtype=)
            pass
    return (a @ b).float()


def _loss_grad_torch(X: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, lam: float,
                     mean: torch.Tensor, scale: torch.Tensor, pen: torch.Tensor | None = None,
                     chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Loss and gradient of ``mean CE(Xs W + b) + lam/2 sum_j pen_j ||W_j||^2`` with ``Xs = (X - mean) / scale``,
    never forming ``Xs``: logits ``X (W / scale) + (b - mean (W / scale))``, gradient
    ``(X^T G - mean (1^T G)) / scale``. Row chunks of ``chunk_rows`` (default: ``LOGIT_CHUNK_ELEMS / K``) bound
    the memory of the logits. ``W`` is (d, K); ``K == 1`` is the binary (sigmoid) model with y in {0, 1}.
    Returns (loss, gW, gb) as device tensors (nothing is read back to the host)."""
    n = X.shape[0]
    K = W.shape[1]
    Wr = W / scale.unsqueeze(1)
    br = b - mean @ Wr
    rows = chunk_rows or max(1, LOGIT_CHUNK_ELEMS // max(K, 1))
    loss = torch.zeros((), dtype=W.dtype, device=X.device)
    XtG = torch.zeros_like(W)
    sG = torch.zeros_like(b)
    for i in range(0, n, rows):
        Xc, yc = X[i:i + rows], y[i:i + rows]
        Z = _mm32(Xc, Wr).add_(br)
        if K == 1:
            yf = yc.to(Z.dtype).unsqueeze(1)
            loss += (torch.nn.functional.softplus(Z) - yf * Z).sum()
            G = torch.sigmoid(Z).sub_(yf)
        else:
            lse = torch.logsumexp(Z, dim=1)
            loss += (lse - Z.gather(1, yc.unsqueeze(1)).squeeze(1)).sum()
            G = Z.sub_(lse.unsqueeze(1)).exp_()  # softmax, in place
            G.scatter_add_(1, yc.unsqueeze(1), torch.full((len(yc), 1), -1.0, dtype=G.dtype, device=X.device))
        XtG += _mm32(Xc.T, G) if Xc.dtype in (torch.float32, torch.float64) else _mm32(G.T.to(Xc.dtype), Xc).T
        sG += G.sum(dim=0)
    loss = loss / n
    XtG /= n
    sG /= n
    gW = (XtG - torch.outer(mean, sG)) / scale.unsqueeze(1)
    PW = W if pen is None else W * pen.unsqueeze(1)
    gW += lam * PW
    loss = loss + 0.5 * lam * torch.sum(W * PW)
    return loss, gW, sG


def _device_features(X: np.ndarray, dev: torch.device, dtype: torch.dtype = torch.float32,
                     chunk_elems: int = 1 << 24):
    """(X on ``dev`` in ``dtype``, mean, std (float64 where the device has it), the offset subtracted from X).

    Moved in row chunks of ``chunk_elems`` elements, with mean and variance accumulated chunk by chunk (no
    float64 copy of X anywhere). X is centered on the way (offset = mean) when it is stored in reduced precision
    (bfloat16 keeps 8 bits, float16 11: an uncentered feature would spend them on its offset) or when its
    offsets are large next to its spread (:func:`_needs_centering`); otherwise the offset is 0 and a float32 X
    is used as is (on the CPU, without a copy)."""
    X = np.ascontiguousarray(X, dtype=np.float32) if X.dtype != np.float32 else X
    n, d = X.shape
    acc = torch.float64 if dev.type != "mps" else torch.float32
    rows = max(1, chunk_elems // max(d, 1))

    def chunks():
        for i in range(0, n, rows):
            yield i, torch.from_numpy(np.ascontiguousarray(X[i:i + rows])).to(dev)

    total = torch.zeros(d, dtype=acc, device=dev)
    for _, c in chunks():
        total += c.sum(dim=0, dtype=acc)
    mean = total / n
    sq = torch.zeros(d, dtype=acc, device=dev)
    for _, c in chunks():
        sq += (c.to(acc) - mean).square_().sum(dim=0)
    std = (sq / n).sqrt_()
    center = dtype != torch.float32 or _needs_centering(mean.cpu().numpy(), std.cpu().numpy())
    if not center:
        return torch.from_numpy(X).to(dev), mean, std, torch.zeros_like(mean)
    Xt = torch.empty((n, d), dtype=dtype, device=dev)
    mean32 = mean.float()
    for i, c in chunks():
        Xt[i:i + len(c)] = (c - mean32).to(dtype)
    return Xt, mean, std, mean


def _solve_lbfgs(
    X: torch.Tensor,
    y: torch.Tensor,
    n_out: int,
    lam: float,
    W0: torch.Tensor,
    b0: torch.Tensor,
    max_iter: int,
    tol: float,
    pen: torch.Tensor | None = None,
    mean: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    chunk_rows: int | None = None,
    history: int = 10,
    sync_every: int = SYNC_EVERY,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Minimize ``mean CE + lam/2 sum_j pen_j ||W_j||^2`` over (W, b) from (W0, b0), full-batch L-BFGS on the
    device, features ``(X - mean) / scale`` (see :func:`_loss_grad_torch`; defaults 0 and 1).

    No host synchronization per iteration: the two-loop recursion runs on a fixed ring buffer of ``history``
    curvature pairs, and every decision is a device-side ``torch.where``: a trial step ``theta + t d`` is taken
    if it satisfies Armijo's condition, otherwise the iterate stays and ``t`` is halved for the next iteration
    (the same direction again); a pair enters the buffer only with positive curvature (its inverse ``rho`` is
    0 otherwise, so it changes nothing). The host reads the gradient's max-norm once every ``sync_every``
    iterations, to stop once it is <= ``tol`` (scikit-learn's rule, as the CPU solver) or when no step makes
    progress any more. ``n_out == 1`` is the binary (sigmoid) model. Returns (W, b, n_evaluations, converged).
    """
    d = X.shape[1]
    K = n_out
    dev = X.device
    mean = torch.zeros(d, device=dev) if mean is None else mean
    scale = torch.ones(d, device=dev) if scale is None else scale
    dK = d * K

    def fun(theta):
        loss, gW, gb = _loss_grad_torch(X, y, theta[:dK].view(d, K), theta[dK:], lam, mean, scale, pen, chunk_rows)
        return loss, torch.cat([gW.reshape(-1), gb])

    theta = torch.cat([W0.reshape(-1).float(), b0.float()])
    f, g = fun(theta)
    evals = 1
    S = torch.zeros(history, theta.numel(), device=dev)
    Yb = torch.zeros_like(S)
    rho = torch.zeros(history, device=dev)
    gamma = torch.clamp(1.0 / g.abs().sum().clamp_min(1e-30), max=1.0)  # first step: torch.optim.LBFGS's scale
    t = torch.ones((), device=dev)
    one = torch.ones((), device=dev)
    slot = 0
    it = 0
    converged = False
    f_checked = None
    while it < max_iter:
        it += 1
        q = -g
        order = [(slot - 1 - j) % history for j in range(history)]  # newest first
        alphas = []
        for j in order:
            a = rho[j] * torch.dot(S[j], q)
            alphas.append(a)
            q = q - a * Yb[j]
        q = q * gamma
        for j, a in zip(reversed(order), reversed(alphas)):
            q = q + (a - rho[j] * torch.dot(Yb[j], q)) * S[j]
        slope = torch.dot(g, q)
        descent = slope < 0  # round-off can spoil it: then steepest descent
        q = torch.where(descent, q, -gamma * g)
        slope = torch.where(descent, slope, -gamma * torch.dot(g, g))
        trial = theta + t * q
        f_new, g_new = fun(trial)
        evals += 1
        ok = (f_new <= f + 1e-4 * t * slope) & torch.isfinite(f_new)
        s_vec, y_vec = trial - theta, g_new - g
        sy = torch.dot(s_vec, y_vec)
        valid = ok & (sy > 1e-10 * torch.dot(y_vec, y_vec))
        S[slot] = torch.where(valid, s_vec, S[slot])
        Yb[slot] = torch.where(valid, y_vec, Yb[slot])
        rho[slot] = torch.where(valid, 1.0 / torch.where(valid, sy, one), rho[slot])
        gamma = torch.where(valid, sy / torch.dot(y_vec, y_vec).clamp_min(1e-30), gamma)
        slot = (slot + 1) % history
        theta = torch.where(ok, trial, theta)
        f = torch.where(ok, f_new, f)
        g = torch.where(ok, g_new, g)
        t = torch.where(ok, one, 0.5 * t)
        if it % sync_every == 0 or it == max_iter:
            gmax, f_now, t_now = torch.stack([g.abs().max(), f, t]).tolist()  # the one read-back
            if gmax <= tol:
                converged = True
                break
            # no progress over the last sync_every iterations, or no step accepted at float32 precision
            if t_now < 1e-8 or (f_checked is not None and abs(f_checked - f_now) <= 1e-12 * max(abs(f_now), 1.0)):
                break
            f_checked = f_now
    if not converged:
        converged = g.abs().max().tolist() <= tol
    return theta[:dK].view(d, K).clone(), theta[dK:].clone(), evals, converged


# --------------------------------------------------------------------------------------------------
# CPU solver: whitened (PCA) coordinates, hand-written L-BFGS on numpy float32 BLAS

#: below this many multiply-adds per matmul (n * d * K) a CPU fit runs its BLAS on one thread: thread
#: hand-offs cost more than they save on small problems, and are catastrophic on a loaded machine.
_SINGLE_THREAD_BELOW = 1 << 22
#: rows of X used to estimate the covariance for the whitening (any invertible reparametrization is
#: exact, so an estimate is enough: it only has to condition the problem well).
_WHITEN_ROWS = 4096


_THREADPOOLS: list = []


def _one_blas_thread():
    """Context limiting the BLAS/OpenMP pools to one thread (a cached controller: ~25 us, not ~0.5 ms)."""
    if not _THREADPOOLS:
        from threadpoolctl import ThreadpoolController

        _THREADPOOLS.append(ThreadpoolController())
    return _THREADPOOLS[0].limit(limits=1)


class _WhiteningCache:
    """Eigendecomposition of the feature covariance, cached per feature array (weakly referenced).

    A regularization path refits on the very same array ~10 times; the whitening depends on the data
    only, so it is computed once per array. A stale entry could only make conditioning worse, never
    the answer wrong (every invertible reparametrization is exact), but arrays are matched by identity,
    address and shape anyway.
    """

    def __init__(self, size: int = 4):
        self.size = size
        self.entries: list[tuple[Any, tuple, tuple]] = []

    def get(self, X: np.ndarray, X32: np.ndarray, mean: np.ndarray, dscale: np.ndarray):
        import weakref

        key = (X.shape, X.__array_interface__["data"][0], X.strides, tuple(dscale[:4]), float(dscale.sum()))
        for ref, k, val in self.entries:
            if ref() is X and k == key:
                return val
        val = _whitening(X32, mean, dscale)
        try:
            ref = weakref.ref(X)
        except TypeError:  # pragma: no cover - arrays always support weak references
            return val
        self.entries = [e for e in self.entries if e[0]() is not None][-(self.size - 1):] + [(ref, key, val)]
        return val


def _whitening(X32: np.ndarray, mean: np.ndarray, dscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues, eigenvectors) of the covariance of (X - mean) / dscale, estimated on an evenly spaced
    sample of max(_WHITEN_ROWS, 2 d) rows (all rows when fewer). With n <= d (a rank-deficient
    covariance, tiny problems): the per-feature variances and the identity (diagonal rescaling)."""
    n, d = X32.shape
    if n <= d:  # few points (few-shot): per-feature variances only, no d x d eigendecomposition
        var = ((X32.astype(np.float64) - mean) / dscale).var(axis=0)
        return var, np.eye(d)
    m = min(n, max(_WHITEN_ROWS, 2 * d))
    rows = np.unique(np.linspace(0, n - 1, m).astype(np.int64))
    Xs = (X32[rows].astype(np.float64) - mean) / dscale
    cov = Xs.T @ Xs / len(rows)
    # LAPACK's threaded eigh is erratic on a loaded machine; one thread takes ~0.1 s at d=512
    with _one_blas_thread() if d < 1024 else _nullcontext():
        evals, V = np.linalg.eigh(cov)
    return np.clip(evals, 0.0, None), V


_WHITENING = _WhiteningCache()

#: center features (a float32 copy) when max_j |mean_j| / std_j exceeds this: the logits ``X @ W`` are formed in
#: float32 from uncentered X, and an offset of ``r`` standard deviations cancels ~log2(r) of float32's 24 bits (at
#: r = 5,000, e.g. features ``7 + 1e-3 x``, the optimum is only resolved to ~3e-4 and a fit stops short of its
#: tolerance on some CPUs and not on others). Below it (typical encoder features), X is used as given, no copy.
_CENTER_ABOVE = 16.0


def _column_mean_std(X: np.ndarray, chunk_rows: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Column means and population standard deviations of X in float64, summed over row chunks: ``X.mean`` /
    ``X.std`` with ``dtype=np.float64`` each make a full float64 copy of X (2x a float32 X) for a moment."""
    n = max(len(X), 1)
    chunks = [slice(i, i + chunk_rows) for i in range(0, len(X), chunk_rows)]
    mean = sum((X[c].sum(axis=0, dtype=np.float64) for c in chunks), np.zeros(X.shape[1])) / n
    ss = np.zeros_like(mean)
    for c in chunks:
        dev = X[c] - mean
        ss += np.square(dev, out=dev).sum(axis=0)
    return mean, np.sqrt(ss / n)


def _needs_centering(mean: np.ndarray, std: np.ndarray) -> bool:
    ratio = np.abs(mean) / np.where(std > 0, std, np.inf)
    return bool(ratio.size and float(ratio.max()) > _CENTER_ABOVE)


def _solve_whitened(
    X: np.ndarray,
    y: np.ndarray,
    n_out: int,
    lam: float,
    W0: np.ndarray,
    b0: np.ndarray,
    mean: np.ndarray,
    dscale: np.ndarray,
    evals: np.ndarray,
    V: np.ndarray,
    max_iter: int,
    tol: float,
    history: int = 10,
    memory: tuple[list, list, float] | Any = None,
    standardized: bool = False,
) -> tuple[np.ndarray, np.ndarray, int, bool, Any]:
    """Minimize ``mean CE(X W + b) + lam/2 ||diag(dscale) W||^2`` over (W, b), from (W0, b0).

    Change of variables (exact: the same objective in other coordinates)::

        W = P U,  P = diag(1/dscale) V diag(1/s),   b = c - mean @ W,

    with V, evals the eigenvectors/values of the covariance of (X - mean)/dscale and
    ``s_j^2 = evals_j + max(4, K) lam``. In (U, c) the penalty is ``lam/2 sum_j ||U_j||^2 / s_j^2``
    (still diagonal), the intercept is decoupled, and the curvature is nearly the same in every
    direction: the data term contributes ~ evals_j / (K s_j^2) (softmax curvature ~1/K, 1/4 for the
    sigmoid) and the penalty lam / s_j^2, so the sum is ~1/K for each j. L-BFGS then needs far fewer
    iterations than on raw, correlated features.
    ``X`` (float32, n x d) is never transformed: the logits are ``X @ W + b`` with W = P U formed per
    evaluation (a d x d x K product, negligible next to the two n x d x K ones).

    Stopping rule: scikit-learn's, max |gradient| <= tol, on the gradient of the model the user fits:
    raw features (``standardized=False``: grad wrt (W, b), ``X^T G + lam W`` and ``1^T G``), or z-scored
    features (``standardized=True``: grad wrt (diag(dscale) W, b + mean W), ``((X - mean)^T G + lam
    diag(dscale^2) W) / dscale`` and ``1^T G``: the centering term ``outer(mean, 1^T G)`` belongs to it).
    ``converged`` is that rule at the returned point. L-BFGS with an Armijo backtracking line search
    (the objective is strictly convex, so every step gives a positive curvature pair).
    ``n_out == 1`` is the binary (sigmoid) model with y in {0, 1}.

    ``memory`` = (S, Y, lam_old): L-BFGS curvature pairs of a previous fit on the same X, in the
    coordinates (W, c) (c = b + mean @ W), so that they survive a change of whitening. Moving along the
    regularization path changes only the quadratic penalty, whose contribution to each pair is known
    exactly: y += (lam - lam_old) [diag(dscale^2) s_W; 0]. Pairs that lose positive curvature are dropped.
    ``memory`` may also be the zero-argument callable a previous fit returned (converted on first use).

    The L-BFGS initial inverse Hessian (the ``gamma I`` of textbook L-BFGS) is a Kronecker-factored
    approximation of the Hessian, rebuilt at every iterate (:func:`precondition`): features factor
    ``diag(evals / s2)`` (the whitening above), class factor ``A = mean_i (diag(p_i) - p_i p_i^T)`` from the current
    probabilities (O(n K^2), no extra pass over X), penalty ``lam / s2``. The whitening alone assumes a class
    curvature of ~1/K; once the fit is confident the real one is far smaller and direction-dependent, which is
    what made weakly regularized fits slow. On the 50k x 512 x 10 benchmark this cuts the evaluations by ~30 %.
    Returns (W, b, evaluations, converged, memory for the next fit: a callable giving (S, Y, lam)).
    """
    n, d = X.shape
    K = n_out
    # s_j^2 (eigenvalues floored for rank-deficient X)
    s2 = np.maximum(evals, 1e-6 * max(float(evals.max()), 1e-30)) + lam * max(4.0, float(K))
    P = (V / np.sqrt(s2)) / dscale[:, None]  # d x d
    Pinv = (np.sqrt(s2)[:, None] * V.T) * dscale[None, :]  # P^{-1} = diag(s) V^T diag(dscale)
    inv_s2 = (1.0 / s2)[:, None]
    dK = d * K
    binary = K == 1
    rows = np.arange(n)
    yi = y.astype(np.int64)
    if binary:
        yf = y.astype(np.float32)[:, None]
    Zbuf = np.empty((n, K), dtype=np.float32)
    XT = X.T
    mean64 = mean.astype(np.float64)

    P32, PT32 = P.astype(np.float32), np.ascontiguousarray(P.T, dtype=np.float32)

    ev_floored = np.maximum(evals, 1e-6 * max(float(evals.max()), 1e-30))[:, None]

    def curvature(Pr):
        """The class factor of the data term's Hessian, mean_i (diag(p_i) - p_i p_i^T) (sigmoid: mean p(1-p)),
        as its eigen-decomposition (values, vectors)."""
        Pr64 = Pr.astype(np.float64)
        if binary:
            a = np.array([float(np.mean(Pr64 * (1.0 - Pr64)))])
            return a, np.ones((1, 1))
        A = np.diag(Pr64.mean(axis=0)) - (Pr64.T @ Pr64) / n
        a, Q = np.linalg.eigh(A)
        return np.clip(a, 0.0, None), Q

    def precondition(q, curv):
        """Apply the inverse of the Kronecker-factored Hessian (Σ ⊗ A + lam I; intercept block A) to q: the
        L-BFGS initial inverse Hessian. In U coordinates the feature factor is diag(evals / s2), the penalty
        lam / s2, so block (j, k) in A's eigenbasis has curvature (evals_j a_k + lam) / s2_j."""
        a, Q = curv
        qU = q[:dK].reshape(d, K) @ Q
        qU = (s2[:, None] * qU / (ev_floored * a[None, :] + lam)) @ Q.T
        amax = max(float(a.max()), 1e-12)
        qc = ((q[dK:] @ Q) / np.maximum(a, 1e-6 * amax)) @ Q.T
        return np.concatenate([qU.ravel(), qc])

    def unpack(theta):
        U = theta[:dK].reshape(d, K)
        c = theta[dK:]
        W = (P32 @ U.astype(np.float32)).astype(np.float64)  # the d x d products in float32 too
        return U, c, W

    def fun(theta):
        U, c, W = unpack(theta)
        W32 = W.astype(np.float32)
        Z = np.matmul(X, W32, out=Zbuf)
        Z += (c - mean64 @ W).astype(np.float32)
        if binary:
            # CE of sigmoid: softplus(z) - y z ; gradient wrt z: sigmoid(z) - y
            loss = float(np.sum(np.logaddexp(0.0, Z) - yf * Z, dtype=np.float64)) / n
            G = expit(Z)  # no overflow warnings for large |z|
            curv = curvature(G)
            G -= yf
        else:
            Z -= Z.max(axis=1, keepdims=True)
            zy = Z[rows, yi]
            G = np.exp(Z, out=Z)
            ssum = G.sum(axis=1)
            loss = float(np.sum(np.log(ssum) - zy, dtype=np.float64)) / n
            G /= ssum[:, None]
            curv = curvature(G)
            G[rows, yi] -= 1.0
        G *= np.float32(1.0 / n)
        XtG = (XT @ G).astype(np.float64)
        sG = G.sum(axis=0, dtype=np.float64)
        pen = U * inv_s2
        loss += 0.5 * lam * float(np.sum(U * pen))
        XctG = XtG - np.outer(mean64, sG)  # (X - mean)^T G
        gU = (PT32 @ XctG.astype(np.float32)).astype(np.float64) + lam * pen
        g = np.concatenate([gU.ravel(), sG])
        # the fitted model's own gradient (raw or z-scored coordinates) for the stopping rule
        g_sk = ((XctG if standardized else XtG) + lam * (dscale * dscale)[:, None] * W) / dscale[:, None]
        gmax = max(float(np.abs(g_sk).max()), float(np.abs(sG).max()))
        return loss, g, gmax, curv

    theta = np.concatenate([(Pinv @ W0).ravel(), b0 + mean64 @ W0])
    f, g, gmax, curv = fun(theta)
    evals_n = 1
    S: list[np.ndarray] = []
    Y: list[np.ndarray] = []
    R: list[float] = []
    d2 = (dscale * dscale)[:, None]
    if memory is not None:
        memory = memory() if callable(memory) else memory
        for sw, yw in zip(memory[0], memory[1]):
            s_W, y_W = sw[:dK].reshape(d, K), yw[:dK].reshape(d, K) + (lam - memory[2]) * d2 * sw[:dK].reshape(d, K)
            s_new = np.concatenate([(Pinv @ s_W).ravel(), sw[dK:]])
            y_new = np.concatenate([(P.T @ y_W).ravel(), yw[dK:]])
            sy = float(s_new @ y_new)
            if sy > 1e-12 * float(y_new @ y_new):
                S.append(s_new), Y.append(y_new), R.append(1.0 / sy)
    it = 0
    while gmax > tol and it < max_iter and evals_n < 2 * max_iter:
        it += 1
        # two-loop recursion
        q = -g
        alphas = []
        for s_, y_, r_ in zip(reversed(S), reversed(Y), reversed(R)):
            a = r_ * float(s_ @ q)
            alphas.append(a)
            q = q - a * y_
        q = precondition(q, curv)
        for (s_, y_, r_), a in zip(zip(S, Y, R), reversed(alphas)):
            bcoef = r_ * float(y_ @ q)
            q = q + (a - bcoef) * s_
        direction = q
        slope = float(g @ direction)
        if slope >= 0:  # not a descent direction (round-off): restart from steepest descent
            S.clear(), Y.clear(), R.clear()
            direction, slope = -g, -float(g @ g)
        t = 1.0
        accepted = False
        for _ in range(30):
            theta_new = theta + t * direction
            f_new, g_new, gmax_new, curv_new = fun(theta_new)
            evals_n += 1
            if f_new <= f + 1e-4 * t * slope:
                accepted = True
                break
            # quadratic interpolation of the step, safeguarded to [0.1 t, 0.5 t]
            denom = 2.0 * (f_new - f - t * slope)
            t_q = -slope * t * t / denom if denom > 0 else 0.5 * t
            t = min(max(t_q, 0.1 * t), 0.5 * t)
        if not accepted:  # no decrease possible at float32 precision: as converged as it gets
            break
        s_vec = theta_new - theta
        y_vec = g_new - g
        sy = float(s_vec @ y_vec)
        if sy > 1e-12 * float(y_vec @ y_vec):
            S.append(s_vec), Y.append(y_vec), R.append(1.0 / sy)
            if len(S) > history:
                S.pop(0), Y.pop(0), R.pop(0)
        f_old = f
        theta, f, g, gmax, curv = theta_new, f_new, g_new, gmax_new, curv_new
        if abs(f_old - f) <= 1e-12 * max(abs(f_old), abs(f), 1.0):
            break
    U, c = theta[:dK].reshape(d, K), theta[dK:]
    W = P @ U  # the final weights in float64
    b = c - mean64 @ W
    # curvature pairs back to (W, c) coordinates: s_W = P s_U, y_W = P^{-T} y_U
    # (converted only when a warm-started fit asks for them: a single fit does not pay for it)
    def mem():
        return ([np.concatenate([(P @ s_[:dK].reshape(d, K)).ravel(), s_[dK:]]) for s_ in S],
                [np.concatenate([(Pinv.T @ y_[:dK].reshape(d, K)).ravel(), y_[dK:]]) for y_ in Y], lam)

    return W, b, evals_n, gmax <= tol, mem


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
        """numpy float32 BLAS, whitened coordinates, hand-written L-BFGS (see :func:`_solve_whitened`)."""
        if self.precision != "float32":
            raise ValueError(f"precision={self.precision!r} needs the accelerator path (device='cuda', ...); "
                             "the CPU solver computes in float32")
        n, d = X.shape
        mean, std = _column_mean_std(X)
        dscale = np.where(std > 0, std, 1.0) if self.standardize else np.ones(d)
        offset = mean if _needs_centering(mean, std) else None
        if offset is None:
            X32 = np.ascontiguousarray(X, dtype=np.float32)
            sol_mean = mean
        else:  # a centered float32 copy, made in X's own precision (see _needs_centering)
            X32 = np.ascontiguousarray(X - offset.astype(X.dtype), dtype=np.float32)
            sol_mean = X32.mean(axis=0, dtype=np.float64)
        evals, V = _WHITENING.get(X, X32, sol_mean, dscale)
        if prev is not None:
            W0, b0 = np.asarray(prev[0], dtype=np.float64).T, np.asarray(prev[1], dtype=np.float64)
        else:
            W0, b0 = np.zeros((d, n_out)), np.zeros(n_out)
        small = n * d * n_out < _SINGLE_THREAD_BELOW
        with _one_blas_thread() if small else _nullcontext():
            memory = None
            saved = getattr(self, "_lbfgs_memory", None)
            if prev is not None and saved is not None and saved[0]() is X and saved[1] == (X.shape, n_out):
                memory = saved[2]  # same data, warm start: reuse the curvature pairs (see _solve_whitened)
            if offset is not None:
                b0 = b0 + offset @ W0  # the same model on centered features
            W, b, n_evals, conv, mem = _solve_whitened(X32, y_idx, n_out, lam, W0, b0, sol_mean, dscale, evals, V,
                                                       int(self.max_iter), float(self.tol), memory=memory,
                                                       standardized=bool(self.standardize))
            if offset is not None:
                b = b - offset @ W
        import weakref

        self._lbfgs_memory = (weakref.ref(X), (X.shape, n_out), mem)
        return W.T, b, n_evals, conv

    def _fit_torch(self, X, y_idx, n_out, lam, prev, dev):
        """torch on an accelerator: per-feature rescaling, device-side L-BFGS (see :func:`_solve_lbfgs`).

        One copy of X on the device, in ``precision`` (:func:`_device_features`). The solver works on centered,
        rescaled features X' = (X - mean) / scale (never formed: folded into the logits) with W = V / scale,
        b = b' - (mean / scale) V: an exact reparametrization (the intercept is unpenalized, and the penalty stays
        the original one, ||W||^2 = sum_j ||V_j||^2 / scale_j^2). With ``standardize`` the model itself lives in
        z-scored space (scale = std, penalty ||V||^2)."""
        Xt, mean64, std64, offset = _device_features(X, dev, PRECISIONS[self.precision])
        mean, std = mean64.float(), std64.float()
        if self.standardize:
            scale = torch.where(std > 0, std, torch.ones_like(std))
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
        W, b, n_evals, conv = _solve_lbfgs(Xt, yt, n_out, lam, W0, b0, int(self.max_iter), tol_v, pen,
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


def stratified_split(y: np.ndarray, n_out: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices of ``y`` into (keep, out) with ``len(out) == n_out``, stratified and seeded.

    Falls back to a plain seeded random split when stratification is impossible (a class with a
    single member, or fewer out-slots than classes).
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
        keep, out = perm[n_out:], perm[:n_out]
    return np.sort(keep), np.sort(out)


def _as_grid(grid: Sequence[float] | None) -> np.ndarray:
    g = DEFAULT_GRID if grid is None else np.asarray(grid, dtype=float).ravel()
    if g.size == 0 or not np.all(np.isfinite(g)) or np.any(g <= 0):
        raise ValueError("the C grid must hold positive finite values")
    return np.sort(g)  # strong -> weak regularization


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
            self._est.set_params(C=c).fit(self.x, self.y)
            self.models[c] = copy.deepcopy(self._est).set_params(warm_start=self._warm)
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
    final.fit(x, y)
    return final.set_params(warm_start=warm)


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
    g = _as_grid(grid)
    est = LinearProbe(**probe_params) if estimator is None else estimator
    n_val = int(round(val_fraction * len(y)))
    n_val = min(max(n_val, 1), len(y) - 1)
    fit_idx, val_idx = stratified_split(y, n_val, seed)
    path = PathFitter(est, x[fit_idx], y[fit_idx], g)
    best_C, table = fit_path(path, x[val_idx], y[val_idx], patience=patience)
    final = refit_from(est, path.get(best_C), best_C, x, y)
    return best_C, final, table
