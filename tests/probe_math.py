"""Float64 reference math for LinearProbe tests: the objective, its exact gradient and the distance of a fit from
the exact optimum, in the coordinates of the model the probe fits (raw or z-scored features)."""

import numpy as np


def model_coords(probe, X):
    """(features, W (K x d), b (K,)) of ``probe``'s model: z-scored with the fitting set's mean/std when
    ``probe.standardize``, else raw. Multiclass only (K >= 3)."""
    X = np.asarray(X, dtype=np.float64)
    if not probe.standardize:
        return X, probe.coef_, probe.intercept_
    mu, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (X - mu) / sd, probe.coef_ * sd, probe.intercept_ + probe.coef_ @ mu


def _softmax(Z):
    Z = Z - Z.max(1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(1, keepdims=True)


def objective(Xm, y, W, b, C):
    """mean CE + 1/(2 n C) ||W||^2: the probe's objective (scikit-learn's divided by n C)."""
    n = len(y)
    Z = Xm @ W.T + b
    Z = Z - Z.max(1, keepdims=True)
    ce = np.log(np.exp(Z).sum(1)) - Z[np.arange(n), y]
    return float(ce.mean() + 0.5 / (n * C) * np.sum(W ** 2))


def gradient(Xm, y, W, b, C):
    """(grad_W (K x d), grad_b (K,)) of :func:`objective`."""
    n = len(y)
    G = _softmax(Xm @ W.T + b)
    G[np.arange(n), y] -= 1.0
    G /= n
    return G.T @ Xm + W / (n * C), G.sum(0)


def _newton_step(Xm, y, W, b, C):
    """(Newton step delta = H^{-1} g as (K, d+1) rows [W_k, b_k], gradient g likewise) at the fit. H's null
    direction -- one shift of every class's intercept, which changes no probability -- is removed."""
    n, d = Xm.shape
    K = W.shape[0]
    Xt = np.hstack([Xm, np.ones((n, 1))])
    P = _softmax(Xm @ W.T + b)
    m = d + 1
    H = np.zeros((K * m, K * m))
    for k in range(K):
        for j in range(K):
            w = P[:, k] * ((k == j) - P[:, j])
            H[k * m:(k + 1) * m, j * m:(j + 1) * m] = (Xt * w[:, None]).T @ Xt / n
    H += np.diag(np.tile(np.r_[np.ones(d), 0.0], K) / (n * C))
    gW, gb = gradient(Xm, y, W, b, C)
    g = np.hstack([gW, gb[:, None]]).ravel()
    ev, Q = np.linalg.eigh(H)
    keep = ev > 1e-10 * ev.max()
    delta = (Q[:, keep] / ev[keep]) @ (Q[:, keep].T @ g)
    return delta.reshape(K, m), g.reshape(K, m)


def suboptimality(Xm, y, W, b, C):
    """Second-order estimate of objective(fit) - objective(optimum) = g^T H^{-1} g / 2."""
    delta, g = _newton_step(Xm, y, W, b, C)
    return float(np.sum(delta * g) / 2)


def prob_distance_to_optimum(Xm, y, W, b, C):
    """Second-order estimate of max_i,k |p_ik - p*_ik| between this fit and the exact optimum.

    The Newton step delta = H^{-1} g is the distance to the optimum of the local quadratic model; it moves the
    logits by dz_i = [x_i, 1] delta_k, and a softmax moves by |dp_k| <= p_k (1 - p_k) range(dz) <= range(dz) / 4.
    """
    delta, _ = _newton_step(Xm, y, W, b, C)
    dz = np.hstack([Xm, np.ones((len(Xm), 1))]) @ delta.T
    return float((dz.max(1) - dz.min(1)).max() / 4)
