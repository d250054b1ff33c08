"""Regression tests for issue 12 (numbers you can trust), estimator side: one table-driven file.

Each test names the issue item it covers (``#N``); each failed on the code before its fix.
"""

import inspect

import numpy as np
import pytest

import riskdecomp as rd
from riskdecomp.decomposition import decompose
from riskdecomp.fewshot import fewshot_errors
from riskdecomp.probes import DEFAULT_STANDARDIZE, LinearProbe, tune_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def class_means(k, per_class, n_test_per_class, d=16, sep=3.0, seed=0):
    """k Gaussian classes: means N(0, sep^2 I_d), unit noise; (x_train, y_train, x_test, y_test)."""
    r = np.random.default_rng(seed)
    mu = r.normal(size=(k, d)) * sep
    ytr = np.repeat(np.arange(k), per_class)
    yte = np.repeat(np.arange(k), n_test_per_class)
    return mu[ytr] + r.normal(size=(len(ytr), d)), ytr, mu[yte] + r.normal(size=(len(yte), d)), yte


# ----------------------------------------------------------------------------------------------- #15
def test_one_standardize_default_everywhere():
    """#15: the Python API and the CLI (runner.Settings) share one default, and the default changes results."""
    from riskdecomp.runner import Settings

    defaults = {
        "LinearProbe": LinearProbe().standardize,
        "decompose": inspect.signature(decompose).parameters["standardize"].default,
        "fewshot_errors": inspect.signature(fewshot_errors).parameters["standardize"].default,
        "Settings (CLI)": Settings().standardize,
    }
    assert set(defaults.values()) == {DEFAULT_STANDARDIZE}, defaults
    assert rd.LinearProbe is LinearProbe and rd.decompose is decompose
    # behaviour, not only signatures: badly scaled features give the standardized answer by default
    x, y, xt, yt = class_means(4, 40, 10, d=8, sep=1.0)
    scale = np.logspace(-4, 2, 8)
    x, xt = x * scale, xt * scale
    a = LinearProbe(C=1.0, device="cpu").fit(x, y)
    b = LinearProbe(C=1.0, device="cpu", standardize=True).fit(x, y)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    grid = np.logspace(-2, 1, 3)
    da = decompose(x, y, xt, yt, grid=grid, n_boot=0, device="cpu")
    db = decompose(x, y, xt, yt, grid=grid, n_boot=0, device="cpu", standardize=True)
    assert da.to_frame().equals(db.to_frame())
    C, probe, _ = tune_probe(x, y, grid=grid, device="cpu")
    assert probe.standardize is DEFAULT_STANDARDIZE
