"""Numerics on ordinary real features (issue 24, class 5, and the rare-class item of class 9): near-constant and
dead feature columns, probes with many classes, a rare class missing from a cross-fitting fold, and a failing fit
that says which model, which stage and why in one line."""

import gzip

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from zoo_factory import run_cli

from riskdecomp.estimators import solvers
from riskdecomp.estimators.probe import LinearProbe
from riskdecomp.estimators.selection import stratified_split

FAST = ["--n-boot", "20", "--fewshot-seeds", "1", "--no-report", "--no-progress", "--jobs", "1"]
ERRORS = ["err_train_train", "err_heldout", "err_test", "err_sub_test"]


def _evaluate(tmp_path, name, x_tr, y_tr, x_te, y_te, *extra):
    """``riskdecomp evaluate`` on one precomputed-feature entry; (exit status, leaderboard row or None, out)."""
    np.savez(tmp_path / f"{name}.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    zoo = tmp_path / f"{name}.yaml"
    zoo.write_text(f"models:\n  - name: {name}\n    source: features\n    path: {name}.npz\n")
    out = tmp_path / f"out-{name}"
    rc = run_cli("evaluate", "--zoo", str(zoo), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                 *FAST, *extra)
    board = out / "leaderboard.csv"
    table = pd.read_csv(board) if board.is_file() else pd.DataFrame()
    row = table.iloc[0] if len(table) else None
    return rc, row, out


def _clusters(n, d=24, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(classes, d)) * 0.3
    y = np.arange(n) % classes
    return (means[y] + rng.normal(size=(n, d))).astype(np.float32), y


# ------------------------------------------------------------------------ near-constant / dead columns
def test_constant_columns_rule():
    from riskdecomp.estimators.solvers import CONSTANT_REL_STD, constant_columns, feature_scale

    mean = np.array([0.0, 5.0, 1000.0, 0.3, 1e-3, 0.0])
    std = np.array([0.0, 1.0, 6e-5, 3e-8, 1e-4, 1e-9])
    # dead (0), ordinary, rounding noise on an offset (6e-8 of it), rounding noise, a small-scale ordinary column,
    # and a tiny-scale column centred on 0 (ordinary: the rule is per column and scale-free)
    assert constant_columns(mean, std).tolist() == [True, False, True, True, False, False]
    assert feature_scale(mean, std).tolist() == [1.0, 1.0, 1.0, 1.0, 1e-4, 1e-9]
    # ordinary features keep their std exactly (the committed numbers do not move), at any scale per column
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.logspace(-3, 3, 6) + 7.0
    assert np.array_equal(feature_scale(x.mean(0), x.std(0)), x.std(0))
    assert CONSTANT_REL_STD == 1e-6


def test_near_constant_columns_change_no_error_through_the_cli(tmp_path):
    """8 columns that are constant up to float32 rounding noise (1000 +- 1 ulp, 0.25 +- 1 ulp) carry no information:
    the decomposition must read the same as with exactly constant columns. Before the fix they were z-scored to
    unit variance (rounding noise amplified ~1e7x) and moved err_train_train by ~10 points."""
    x_tr, y_tr = _clusters(300)
    x_te, y_te = _clusters(200, seed=1)
    rng = np.random.default_rng(5)

    def with_cols(x, noise):
        n = len(x)
        big = np.float32(1000.0) + noise * np.float32(6.1035156e-05) * rng.integers(-1, 2, (n, 4))
        small = np.float32(0.25) + noise * np.float32(2.9802322e-08) * rng.integers(-1, 2, (n, 4))
        return np.c_[x, big, small].astype(np.float32)

    flags = ("--feature-dtype", "float32", "--no-uncertainty", "--no-active")
    rc_c, const, _ = _evaluate(tmp_path, "const", with_cols(x_tr, 0), y_tr, with_cols(x_te, 0), y_te, *flags)
    rc_n, near, _ = _evaluate(tmp_path, "near", with_cols(x_tr, 1), y_tr, with_cols(x_te, 1), y_te, *flags)
    assert rc_c == 0 and rc_n == 0
    assert near["err_train_train"] == const["err_train_train"]
    for col in ERRORS:
        assert abs(near[col] - const[col]) <= 1.0, (col, near[col], const[col])


def test_probe_weights_ignore_a_near_constant_column():
    """The probe's weight on a column of rounding noise stays at the scale of the others (z-scoring it used to
    give it ~1e7x the weight of an ordinary column), and the fit converges to finite numbers."""
    x, y = _clusters(300)
    rng = np.random.default_rng(2)
    noise = np.float32(0.25) + np.float32(2.9802322e-08) * rng.integers(-1, 2, (300, 1))
    p = LinearProbe(C=100.0).fit(np.c_[x, noise].astype(np.float32), y)
    assert np.isfinite(p.coef_).all() and np.isfinite(p.intercept_).all()
    assert np.abs(p.coef_[:, -1]).max() < 10 * np.abs(p.coef_[:, :-1]).max()


def test_a_non_finite_trial_point_never_reaches_the_curvature():
    """A start so far out that the logits overflow float32 (here a warm start from absurd weights): the solver
    says so in one line, instead of feeding NaN probabilities to the preconditioner's eigh ('LinAlgError:
    Eigenvalues did not converge', the failure reported on dead-column features)."""
    from riskdecomp.utils.errors import FeatureError

    x, y = _clusters(200)
    p = LinearProbe(warm_start=True).fit(x, y)
    p.coef_ = np.random.default_rng(0).normal(size=p.coef_.shape) * 1e38
    with pytest.raises(FeatureError, match="not finite"):
        p.fit(x, y)


# ------------------------------------------------------------------------ many classes
def _count_eigh(monkeypatch, k):
    calls = []
    orig = np.linalg.eigh

    def eigh(a, *args, **kw):
        if np.shape(a) == (k, k):
            calls.append(1)
        return orig(a, *args, **kw)

    monkeypatch.setattr(solvers.np.linalg, "eigh", eigh)
    return calls


def test_800_classes_x_2_points_fit_without_a_KxK_eigh_per_evaluation(monkeypatch):
    """The issue's case: 800 classes x 2 train points. The K x K eigh of the preconditioner ran at every function
    evaluation (O(K^3) each: > 500 s for the C grid); above ``_EIGH_MAX_CLASSES`` classes its diagonal is used."""
    K = 800
    calls = _count_eigh(monkeypatch, K)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(K), 2)
    x = (rng.normal(size=(K, 32))[y] + 0.5 * rng.normal(size=(2 * K, 32))).astype(np.float32)
    p = LinearProbe(C=1.0, max_iter=100).fit(x, y)
    assert calls == [] and p.n_iter_[0] > 2
    assert np.isfinite(p.coef_).all() and np.mean(p.predict(x) == y) > 0.95


def test_small_class_counts_keep_the_full_preconditioner(monkeypatch):
    """10 classes (every committed result): the exact Kronecker factor, one eigh per evaluation, as before."""
    calls = _count_eigh(monkeypatch, 10)
    x, y = _clusters(200)
    p = LinearProbe(C=1.0).fit(x, y)
    assert len(calls) == p.n_iter_[0]


def test_many_classes_through_the_cli_run_no_KxK_eigh(tmp_path, monkeypatch):
    """``riskdecomp evaluate`` on 100 classes x 4 train points: every probe of the decomposition and the few-shot
    runs without a K x K eigh (before: one per function evaluation of every fit)."""
    K = 100
    calls = _count_eigh(monkeypatch, K)
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, 16))
    y_tr, y_te = np.arange(4 * K) % K, np.arange(2 * K) % K
    x_tr = (means[y_tr] + 0.5 * rng.normal(size=(len(y_tr), 16))).astype(np.float32)
    x_te = (means[y_te] + 0.5 * rng.normal(size=(len(y_te), 16))).astype(np.float32)
    rc, row, _ = _evaluate(tmp_path, "many", x_tr, y_tr, x_te, y_te, "--no-uncertainty", "--no-active",
                           "--no-statistics", "--shots", "1", "--fractions", "0.5")
    assert rc == 0 and row["n_classes"] == K and np.isfinite(row["agg_risk"])
    assert calls == []


# ------------------------------------------------------------------------ a rare class
@pytest.mark.parametrize("n_rare", [1, 2])
def test_a_rare_class_missing_from_a_fold_does_not_fail_the_model(tmp_path, n_rare):
    """Binary data with a rare class of 1 or 2 train points, default estimators: some cross-fitting fold (or its
    fitting part) has no point of it. That probe predicts the one class it saw, instead of failing the model with
    'needs samples of at least 2 classes'."""
    rng = np.random.default_rng(0)
    y_tr = np.r_[np.zeros(60, int), np.ones(n_rare, int)]
    y_te = np.r_[np.zeros(20, int), np.ones(2, int)]
    x_tr = (rng.normal(size=(len(y_tr), 5)) + y_tr[:, None]).astype(np.float32)
    x_te = (rng.normal(size=(len(y_te), 5)) + y_te[:, None]).astype(np.float32)
    rc, row, out = _evaluate(tmp_path, f"rare{n_rare}", x_tr, y_tr, x_te, y_te)
    assert rc == 0, (out / "failures.csv").read_text() if (out / "failures.csv").is_file() else rc
    assert row["holdout"] == "crossfit" and row["n_classes"] == 2
    for col in ERRORS:
        assert 0 <= row[col] <= 100


def test_fallback_split_keeps_every_class_in_the_fitting_part():
    """When stratification is impossible (a class with a single member), the seeded split still leaves every class
    a member in the part the probe is fitted on, wherever another class can spare one."""
    y = np.r_[np.zeros(30, int), np.ones(1, int), np.full(5, 2)]
    for seed in range(40):
        keep, out = stratified_split(y, 7, seed)
        assert len(out) == 7 and len(keep) == len(y) - 7
        assert sorted(np.unique(y[keep])) == [0, 1, 2]
        assert len(np.intersect1d(keep, out)) == 0


# ------------------------------------------------------------------------ a failing fit, in one line
def test_a_failing_fit_names_model_stage_and_cause_in_one_line(tmp_path, monkeypatch, capsys):
    """A probe fit that raises inside the decomposition (here an injected LinAlgError on the held-out fits): the
    CLI line and failures.csv name the model, the stage and the fit, and the cause."""
    orig = LinearProbe.fit
    seen = []

    def fit(self, X, y):
        seen.append(len(y))
        if len(seen) > 12:  # past the train path: the held-out fits of fold 1
            raise np.linalg.LinAlgError("Eigenvalues did not converge")
        return orig(self, X, y)

    monkeypatch.setattr(LinearProbe, "fit", fit)
    x_tr, y_tr = _clusters(200)
    x_te, y_te = _clusters(100, seed=1)
    rc, _, out = _evaluate(tmp_path, "broken", x_tr, y_tr, x_te, y_te)
    assert rc != 0
    err = capsys.readouterr().err
    line = [ln for ln in err.splitlines() if "failed:" in ln and "broken" in ln]
    assert len(line) == 1
    assert "decomposition: held-out probe fit (fold 1 of 5): LinAlgError: Eigenvalues did not converge" in line[0]
    fail = pd.read_csv(out / "failures.csv").iloc[0]
    assert fail["model"] == "broken" and "decomposition: held-out probe fit" in fail["error"]
    assert "\n" not in fail["error"]


# ------------------------------------------------------------------------ real images, dead columns
def _mnist_folder(shared_dir, root, n_train=300, n_test=200):
    src = shared_dir / "data" / "mnist-test"
    with gzip.open(src / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(src / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_train + n_test))):
        for i in rows:
            d = root / split / str(labels[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(d / f"{i}.png")
    return root


@pytest.mark.shared
@pytest.mark.slow
def test_random_init_timm_encoder_with_dead_columns_on_real_digits(shared_dir, tmp_path):
    """The issue's case: a random-init timm ResNet (96 features) on a folder of grayscale MNIST digit PNGs, default
    flags. A third of its feature columns are dead (exactly 0: ReLU units that never fire); the run completes with
    finite numbers for every error and component."""
    data = _mnist_folder(shared_dir, tmp_path / "digits")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - {name: rnd, source: timm, model: test_resnet, pretrained: false, image_size: 32}\n")
    out = tmp_path / "out"
    rc = run_cli("evaluate", "--zoo", str(zoo), "--dataset", f"imagefolder:{data}", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--no-report")
    assert rc == 0
    feats = [np.load(p).astype(np.float64) for p in sorted((tmp_path / "cache" / "features" / "rnd").glob("*.npy"))]
    x_train = next(f for f in feats if len(f) == 300)
    std = x_train.std(0)
    assert x_train.shape[1] == 96 and (std == 0).sum() >= 24  # the dead columns the issue is about
    row = pd.read_csv(out / "leaderboard.csv").iloc[0]
    for col in [*ERRORS, "usability", "probe_gen", "enc_gen", "agg_risk", "agg_risk_lo", "agg_risk_hi"]:
        assert np.isfinite(row[col]), col
    assert 0 < row["err_test"] < 90  # it learned something, and not everything


def test_the_accelerator_path_gives_a_near_constant_column_scale_1_too(monkeypatch):
    """The torch solver (``_fit_torch``, forced onto the CPU) standardizes with the same rule as the CPU solver: a
    column of float32 rounding noise keeps scale 1, so its weight stays at the scale of the others, and both paths
    predict alike."""
    import torch

    x, y = _clusters(300)
    rng = np.random.default_rng(2)
    noise = np.float32(0.25) + np.float32(2.9802322e-08) * rng.integers(-1, 2, (300, 1))
    xn = np.c_[x, noise].astype(np.float32)
    cpu = LinearProbe(C=100.0).fit(xn, y)

    def fit_torch_on_cpu(self, X, y_idx, n_out, lam, prev):
        return self._fit_torch(X, y_idx, n_out, lam, prev, torch.device("cpu"))

    monkeypatch.setattr(LinearProbe, "_fit_cpu", fit_torch_on_cpu)
    tp = LinearProbe(C=100.0, max_iter=2000).fit(xn, y)
    assert np.isfinite(tp.coef_).all()
    assert np.abs(tp.coef_[:, -1]).max() < 10 * np.abs(tp.coef_[:, :-1]).max()
    assert np.mean(tp.predict(xn) == cpu.predict(xn)) > 0.95
