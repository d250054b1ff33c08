"""Few-shot evaluation: labeled/validation disjointness, k-shot sizes, skipping, known answers."""

import numpy as np
import pytest

from riskdecomp.estimators.fewshot import draw_labeled_and_val, fewshot_errors

GRID = np.logspace(-3, 2, 6)


pytestmark = pytest.mark.usefixtures("one_thread")


def gaussians(n, d=8, k=4, sep=4.0, seed=0):
    r = np.random.default_rng(seed)
    mu = np.random.default_rng(7).normal(size=(k, d)) * sep / np.sqrt(2)
    y = r.integers(0, k, n)
    return mu[y] + r.normal(size=(n, d)), y


def test_labeled_and_validation_sets_are_disjoint_and_balanced():
    y = np.repeat(np.arange(5), [20, 30, 40, 50, 60])
    for k in (1, 3, 10):
        lab, val = draw_labeled_and_val(y, k, np.random.default_rng(k))
        assert not set(lab) & set(val)
        np.testing.assert_array_equal(np.bincount(y[lab]), [k] * 5)
        np.testing.assert_array_equal(np.bincount(y[val]), [max(k, 5)] * 5)


def test_fewshot_summary_table_and_sizes():
    x, y = gaussians(800)
    xt, yt = gaussians(300, seed=1)
    summary, table = fewshot_errors(x, y, xt, yt, shots=(1, 5), fractions=(0.05,), n_seeds=3, grid=GRID,
                                    device="cpu")
    assert set(summary) == {"fewshot_1shot", "fewshot_1shot_std", "fewshot_5shot", "fewshot_5shot_std",
                            "fewshot_5pct", "fewshot_5pct_std"}
    assert list(table.columns[:8]) == ["setting", "kind", "k_or_fraction", "seed", "n_labeled", "n_val", "C",
                                       "error"]
    assert len(table) == 9
    assert set(table.loc[table.setting == "1shot", "n_labeled"]) == {4}
    assert set(table.loc[table.setting == "5shot", "n_labeled"]) == {20}
    assert set(table.loc[table.setting == "5pct", "n_labeled"]) == {4 * 10}  # 5% of 800 / 4 classes
    one = table[table.setting == "1shot"]["error"]
    assert np.isclose(summary["fewshot_1shot"], one.mean()) and np.isclose(summary["fewshot_1shot_std"], one.std())
    # well separated classes: more labels never hurt much, and 5% of the data is nearly perfect
    assert summary["fewshot_5pct"] < 5
    assert summary["fewshot_5shot"] <= summary["fewshot_1shot"] + 5


def test_label_free_features_are_at_chance_few_shot():
    r = np.random.default_rng(0)
    x, y = r.normal(size=(400, 5)), r.integers(0, 4, 400)
    xt, yt = r.normal(size=(400, 5)), r.integers(0, 4, 400)
    summary, _ = fewshot_errors(x, y, xt, yt, shots=(5,), fractions=(), n_seeds=3, grid=GRID, device="cpu")
    assert 60 < summary["fewshot_5shot"] < 90


def test_too_few_examples_skips_setting_with_reason():
    x, y = gaussians(300)
    y = y.copy()
    y[:] = np.where(y == 3, 2, y)
    y[:3] = 3  # class 3 has only 3 train examples
    xt, yt = gaussians(100, seed=1)
    summary, table = fewshot_errors(x, y, xt, yt, shots=(1, 5), fractions=(), n_seeds=2, grid=GRID,
                                    device="cpu")
    assert np.isnan(summary["fewshot_5shot"]) and "class 3" in summary["fewshot_5shot_skipped"]
    assert np.isfinite(summary["fewshot_1shot"]) and "fewshot_1shot_skipped" not in summary
    assert table.loc[table.setting == "5shot", "skipped"].iloc[0].startswith("class 3")


def test_fewshot_is_seeded():
    x, y = gaussians(300, sep=1.0)
    xt, yt = gaussians(100, sep=1.0, seed=1)
    a = fewshot_errors(x, y, xt, yt, shots=(3,), fractions=(), n_seeds=2, grid=GRID, device="cpu")
    b = fewshot_errors(x, y, xt, yt, shots=(3,), fractions=(), n_seeds=2, grid=GRID, device="cpu")
    assert a[0] == b[0]
    c = fewshot_errors(x, y, xt, yt, shots=(3,), fractions=(), n_seeds=2, seed=9, grid=GRID, device="cpu")
    assert c[0] != a[0]
