"""Input checks shared by the stages (in the spirit of ``sklearn.utils.validation``): feature arrays, labels,
integers.
"""

from __future__ import annotations

import numpy as np

from riskdecomp.utils.errors import FeatureError, RiskdecompError

_F32 = np.finfo(np.float32)
#: the largest seed torch.manual_seed / torch.Generator.manual_seed accept (a pretraining recipe's seed)
TORCH_SEED_MAX = 2**64 - 1
#: the largest seed scikit-learn's ``random_state`` (numpy's RandomState) accepts: evaluate's ``--seed`` reaches it
SKLEARN_SEED_MAX = 2**32 - 1
#: rows per chunk when scanning or casting a feature matrix: the temporaries stay ~rows x d, not n x d
CHUNK_ROWS = 4096


def check_feature_values(x: np.ndarray, name: str, dtype=np.float32, hint: str = "rescale the features",
                         subnormal_ok: bool = False) -> int:
    """Reject feature values that ``dtype`` (default float32, what the probes compute in) cannot honour (one-line
    FeatureError naming ``name``, ending with ``hint``): complex or non-numeric dtypes, NaN/inf, finite values
    beyond ``dtype``'s range (they would become inf), feature columns whose non-zero values all round to 0 in
    ``dtype``, and (unless ``subnormal_ok``) columns whose non-zero values are all subnormal in ``dtype`` (they lose
    their precision; in float32, a probe on them is at chance). A lone tiny value in a normal column is kept (it is
    just ~0). Returns the number of subnormal-only columns. Scans in row chunks (a memory-mapped file is read once,
    no n x d temporaries)."""
    if np.iscomplexobj(x):
        raise FeatureError(f"{name}: features are complex numbers (dtype {x.dtype}); give real-valued features")
    if x.dtype == bool or not np.issubdtype(x.dtype, np.number):
        raise FeatureError(f"{name}: features must be real numbers, got dtype {x.dtype}")
    if not np.issubdtype(x.dtype, np.floating):
        return 0  # integers: finite and (for any realistic feature) within float32 range
    info, kind = np.finfo(dtype), np.dtype(dtype).name
    bad = 0
    colmax = np.zeros(x.shape[1:], dtype=x.dtype)  # max |x| per column
    for i in range(0, len(x), CHUNK_ROWS):
        ax = np.abs(x[i:i + CHUNK_ROWS])
        finite = np.isfinite(ax)
        if not finite.all():
            bad += int((~finite).reshape(len(ax), -1).any(axis=1).sum())
        elif len(ax):
            np.maximum(colmax, ax.max(axis=0), out=colmax)
    if bad:
        raise FeatureError(f"{name}: {bad} row(s) contain NaN or inf")
    big = float(colmax.max()) if colmax.size else 0.0
    if big > float(info.max):
        raise FeatureError(f"{name}: values up to {big:.3g} exceed the {kind} range (|x| <= {info.max:.5g}) the "
                           f"{'probes compute' if kind == 'float32' else 'features are stored'} in; {hint}")
    lost = (colmax > 0) & (colmax.astype(dtype) == 0)
    tiny = (colmax > 0) & (colmax < float(info.tiny))
    if lost.any() or (tiny.any() and not subnormal_ok):
        what = (f"round to 0 (below {kind}'s smallest subnormal)" if lost.any() else
                f"are {kind}-subnormal (0 < |x| < {info.tiny:.3g})")
        cols = lost if lost.any() else tiny
        raise FeatureError(f"{name}: {int(cols.sum())} feature column(s) hold only values that {what} in {kind} "
                           f"(e.g. column {int(np.argmax(cols))}): they cannot be represented at {kind} precision; "
                           f"{hint}")
    return int(tiny.sum())


def rounding_noise(x: np.ndarray, dtype) -> np.ndarray:
    """Per column of ``x`` (n, d): the RMS of the error that rounding to ``dtype`` adds, net of its mean (a shift
    every value shares moves no probe), relative to the column's standard deviation; 0 for a constant column.
    A column's information survives the rounding when this is small: rounding moves each value by at most a fixed
    fraction of its magnitude (2^-11 for float16), so a column whose spread is small next to its magnitude (a large
    common offset, e.g. a LayerNorm bias of 2000 with variation ~1) is flattened to a few steps or to one constant.
    Accumulated in float64 over row chunks around the first row (no cancellation, no n x d temporaries)."""
    n, d = len(x), (x.shape[1] if x.ndim == 2 else 0)
    if n == 0 or d == 0:
        return np.zeros(d)
    shift = np.asarray(x[0], dtype=np.float64)
    s1, s2, e1, e2 = (np.zeros(d) for _ in range(4))
    for i in range(0, n, CHUNK_ROWS):
        c = np.asarray(x[i:i + CHUNK_ROWS], dtype=np.float64)
        e = c.astype(dtype).astype(np.float64) - c
        c -= shift
        s1 += c.sum(axis=0)
        s2 += np.square(c).sum(axis=0)
        e1 += e.sum(axis=0)
        e2 += np.square(e).sum(axis=0)
    var = np.maximum(s2 / n - np.square(s1 / n), 0.0)
    noise = np.maximum(e2 / n - np.square(e1 / n), 0.0)
    out = np.zeros(d)
    np.divide(np.sqrt(noise), np.sqrt(var), out=out, where=var > 0)
    return out


def check_features(x: np.ndarray, y: np.ndarray | None, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate one feature array (2-D, non-empty, values a float32 probe can honour: see
    :func:`check_feature_values`) and its labels; one-line FeatureError otherwise."""
    try:
        x = np.asarray(x)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise FeatureError(f"{name}: cannot be read as an array ({exc})") from exc
    if x.ndim != 2:
        raise FeatureError(f"{name}: expected a 2-D array (n_samples, n_features), got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise FeatureError(f"{name}: empty array of shape {x.shape}")
    check_feature_values(x, name)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != x.shape[0]:
            raise FeatureError(f"{name}: {x.shape[0]} feature rows but labels of shape {y.shape}")
    return x, y


def check_int(value, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools and non-integral numbers rejected), else a one-line error."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)) \
            or not float(value).is_integer() or value < minimum:
        raise RiskdecompError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
