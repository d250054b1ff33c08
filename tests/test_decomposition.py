"""Risk decomposition: exact identity, split sizes, no test labels in tuning, known answers, CIs."""

import numpy as np
import pytest

from riskdecomp.estimators.decomposition import boot_means, decompose
from riskdecomp.utils.errors import FeatureError

GRID = np.logspace(-3, 2, 6)


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussians(n, d=10, k=4, sep=3.0, seed=0, noise_dims=0):
    """Class-conditional Gaussians: class means at distance ~sep, plus label-free noise dims."""
    r = np.random.default_rng(seed)
    mu = np.random.default_rng(123).normal(size=(k, d)) * sep / np.sqrt(2)
    y = r.integers(0, k, n)
    x = mu[y] + r.normal(size=(n, d))
    if noise_dims:
        x = np.hstack([x, r.normal(size=(n, noise_dims))])
    return x, y


def run(x, y, xt, yt, **kw):
    kw.setdefault("grid", GRID)
    kw.setdefault("n_boot", 300)
    kw.setdefault("device", "cpu")
    return decompose(x, y, xt, yt, **kw)


def test_components_add_up_exactly_and_split_sizes():
    x, y = gaussians(700, sep=1.5)
    xt, yt = gaussians(250, sep=1.5, seed=1)
    xr, _ = gaussians(700, sep=2.5)  # a "reference" encoder: better features of the same points
    xr = xr + 0.0
    d = run(x, y, xt, yt, reference=(xr, y), alternative=True, holdout="single")
    parts = d["approx"] + d["usability"] + d["probe_gen"] + d["enc_gen"]
    assert parts == d["agg_risk"]
    assert np.isclose(d["agg_risk"], d["err_test"], rtol=0, atol=1e-9)
    assert np.isclose(d["approx"] + d["usability"] + d["probe_gen_alt"] + d["enc_gen_alt"], d["err_test"],
                      rtol=0, atol=1e-9)
    assert d["n_train"] == 700 and d["n_test"] == 250 and d["n_sub"] == min(250, 140)
    assert d["holdout"] == "single" and d["holdout_folds"] == 1
    assert d["approx_merged"] is False
    for name in ("approx", "usability", "probe_gen", "enc_gen", "agg_risk", "err_test", "err_heldout"):
        assert d[f"{name}_lo"] <= d[name] <= d[f"{name}_hi"], name
    for name in ("approx", "usability", "probe_gen", "enc_gen"):
        assert d[f"{name}_clipped"] == max(d[name], 0.0)
    assert d.test_pred_proba.shape == (250, 4)
    np.testing.assert_allclose(d.test_pred_proba.sum(1), 1, atol=1e-6)
    assert np.isclose(100 * np.mean(d.test_probe.predict(xt) != yt), d["err_test"])
    frame = d.to_frame()
    assert len(frame) == 1 and frame.loc[0, "C_test"] == d["C_test"]

    d2 = run(x, y, xt, yt, n_sub=50, holdout="single")
    assert d2["n_sub"] == 50 and d2["approx_merged"] is True and np.isnan(d2["approx"])
    assert d2["usability"] == d2["err_train_train"]
    assert d2["usability"] + d2["probe_gen"] + d2["enc_gen"] == d2["agg_risk"]


def test_test_labels_never_used_for_tuning():
    x, y = gaussians(600, sep=1.2)
    xt, yt = gaussians(200, sep=1.2, seed=1)
    a = run(x, y, xt, yt)
    b = run(x, y, xt, np.random.default_rng(5).permutation(yt))
    for key in ("C_train_train", "C_heldout", "C_test", "err_train_train", "err_heldout",
                "usability", "probe_gen", "n_sub"):
        assert a[key] == b[key], key
    assert a["err_test"] != b["err_test"]
    np.testing.assert_array_equal(a.test_pred_proba, b.test_pred_proba)


def test_separable_features_have_all_components_near_zero():
    x, y = gaussians(600, sep=12.0)
    xt, yt = gaussians(200, sep=12.0, seed=1)
    d = run(x, y, xt, yt, reference=(x, y))
    for name in ("approx", "usability", "probe_gen", "enc_gen", "agg_risk"):
        assert abs(d[name]) < 1.0, (name, d[name])


def test_label_free_features_have_usability_near_chance():
    r = np.random.default_rng(0)
    x, y = r.normal(size=(800, 3)), r.integers(0, 4, 800)
    xt, yt = r.normal(size=(200, 3)), r.integers(0, 4, 200)
    d = run(x, y, xt, yt)
    assert d["usability"] > 65.0  # chance error is 75%; 3 dims can barely overfit 800 points
    assert abs(d["probe_gen"]) < 10 and abs(d["enc_gen"]) < 12


def test_high_dim_noise_with_few_samples_is_dominated_by_probe_generalization():
    r = np.random.default_rng(1)
    x, y = r.normal(size=(250, 400)), r.integers(0, 2, 250)
    xt, yt = r.normal(size=(100, 400)), r.integers(0, 2, 100)
    d = run(x, y, xt, yt)
    assert d["err_train_train"] < 5  # the weakest-regularization fit interpolates
    assert d["probe_gen"] > 35
    assert d["probe_gen"] > max(abs(d["usability"]), abs(d["enc_gen"]))


def test_features_informative_on_train_only_are_dominated_by_encoder_generalization():
    x, y = gaussians(600, sep=6.0)
    r = np.random.default_rng(2)
    yt = r.integers(0, 4, 200)
    xt = r.normal(size=(200, 10)) * 2.0  # the encoder "memorized" train images: test features are noise
    d = run(x, y, xt, yt)
    assert d["err_heldout"] < 10
    assert d["enc_gen"] > 50
    assert d["enc_gen"] > max(abs(d["usability"]), abs(d["probe_gen"]))


def test_bootstrap_ci_shrinks_with_more_data():
    small = run(*gaussians(300, sep=1.0), *gaussians(300, sep=1.0, seed=1), n_boot=500)
    large = run(*gaussians(2400, sep=1.0), *gaussians(2400, sep=1.0, seed=1), n_boot=500)
    for name in ("agg_risk", "probe_gen", "enc_gen"):
        w_small = small[f"{name}_hi"] - small[f"{name}_lo"]
        w_large = large[f"{name}_hi"] - large[f"{name}_lo"]
        assert w_large < 0.7 * w_small, name


def test_pattern_bootstrap_matches_index_resampling():
    """boot_means draws pattern counts instead of indices: the same distribution as resampling the points, for
    errors sharing the evaluation set (paired) and for a mean over a subset (NaN elsewhere: S inside D_tr)."""
    r = np.random.default_rng(0)
    a = r.random(400) < 0.3
    b = a ^ (r.random(400) < 0.1)  # correlated with a
    c = np.where(r.random(400) < 0.25, (r.random(400) < 0.4).astype(float), np.nan)  # defined on a subset
    L = np.column_stack([a, b, c]).astype(float)
    reps = boot_means(L, 20000, np.random.default_rng(1))
    idx = np.random.default_rng(2).integers(0, 400, size=(4000, 400))
    res = L[idx]  # (4000, 400, 3)
    ref = np.nanmean(res, axis=1)
    for j in range(3):
        assert abs(reps[:, j].std() - ref[:, j].std()) < 0.1 * ref[:, j].std(), j
        assert abs(np.nanmean(reps[:, j]) - np.nanmean(L[:, j])) < 2e-3, j
    assert abs(np.std(reps[:, 0] - reps[:, 1]) - np.std(ref[:, 0] - ref[:, 1])) < 0.1 * np.std(ref[:, 0] - ref[:, 1])
    assert abs(np.std(reps[:, 2] - reps[:, 0]) - np.std(ref[:, 2] - ref[:, 0])) < 0.1 * np.std(ref[:, 2] - ref[:, 0])


def test_seeded_and_deterministic():
    x, y = gaussians(400, sep=1.5)
    xt, yt = gaussians(150, sep=1.5, seed=1)
    a, b = run(x, y, xt, yt, seed=3), run(x, y, xt, yt, seed=3)
    assert a.to_frame().equals(b.to_frame())  # NaN-aware equality
    assert a["C_test"] == b["C_test"] and a["agg_risk_lo"] == b["agg_risk_lo"]


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda x, y, xt, yt: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y, xt, yt), "NaN"),
        (lambda x, y, xt, yt: (x, y, xt[:, :-1], yt), "features"),
        (lambda x, y, xt, yt: (x, y, xt, np.where(yt == 0, 99, yt)), "absent"),
        (lambda x, y, xt, yt: (x[:0], y[:0], xt, yt), "empty"),
        (lambda x, y, xt, yt: (x, y[:-1], xt, yt), "labels"),
    ],
)
def test_bad_inputs_raise_one_line_feature_errors(mutate, match):
    x, y = gaussians(100)
    xt, yt = gaussians(50, seed=1)
    with pytest.raises(FeatureError, match=match) as info:
        run(*mutate(x, y, xt, yt))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("holdout", ["crossfit", "single"])
def test_an_encoder_that_is_its_own_reference_has_usability_exactly_zero(holdout):
    """Known answer: usability = err_train_train - err_ref_train_train is 0 for the reference itself, and its approx is
    the one every encoder that references it reads. (The same problem fitted twice with the rows in another order
    differs by float rounding near separability, as here: the old code gave usability 0.067 with crossfit on one
    machine; 0.02 points on the default zoo.)"""
    x, y = gaussians(1500, d=64, k=10, sep=0.5)
    x = x.astype(np.float32)
    xt, yt = gaussians(300, d=64, k=10, sep=0.5, seed=100)
    own = decompose(x, y, xt, yt, reference=(x, y), holdout=holdout, n_boot=20, device="cpu")  # default C grid
    assert own["usability"] == 0.0 and own["usability_lo"] == 0.0 and own["usability_hi"] == 0.0
    assert own["approx"] == own["err_train_train"] == own["err_ref_train_train"]
    x2, _ = gaussians(1500, d=16, k=10, sep=0.3, seed=2)
    xt2, _ = gaussians(300, d=16, k=10, sep=0.3, seed=3)
    other = decompose(x2, y, xt2, yt, reference=(x, y), holdout=holdout, n_boot=20, device="cpu")
    assert other["approx"] == own["approx"]
