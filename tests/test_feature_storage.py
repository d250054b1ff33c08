"""The feature cache's precision (float16 by default, float32 opt-in) and the decomposition's memory path: float16
changes no decomposition number by more than 0.1 points, overflow is a one-line error, float16 and float32 entries
never mix, memory-mapped and in-memory loads give byte-identical results, and ``decompose`` holds one float32
working copy of the features, not several."""

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_datasets import make_folder
from zoo_factory import run_cli

from riskdecomp.estimators.decomposition import decompose
from riskdecomp.features.cache import (
    FEATURE_DTYPES,
    featurize,
    read_cached,
    storage_array,
    storage_plan,
    write_cached,
)
from riskdecomp.features.datasets import load_dataset
from riskdecomp.zoo import parse_zoo

R18 = {"name": "r18", "source": "timm", "model": "resnet18", "pretrained": False, "image_size": 32}


def _scalars(dec) -> dict:
    return {k: v for k, v in dict(dec).items() if np.isscalar(v)}


def test_cli_default_is_the_first_feature_dtype():
    from riskdecomp.cli import evaluate
    from riskdecomp.cli import featurize as featurize_cmd
    from riskdecomp.runner.records import Settings

    for cmd in (evaluate, featurize_cmd):
        opt = next(p for p in cmd.params if p.name == "feature_dtype")
        assert opt.default == FEATURE_DTYPES[0] == "float16" and tuple(opt.type.choices) == FEATURE_DTYPES
    assert Settings().feature_dtype == "float16"


def test_float16_storage_moves_no_decomposition_number_by_more_than_0_1_points(tmp_path):
    """A real encoder (random-init resnet18: 512-d features, ~60-70% error, so many points sit near a decision
    boundary) on the embedded cifar10-mini (5,000 train / 2,000 test), through ``riskdecomp evaluate`` with the
    default float16 cache and with ``--feature-dtype float32``. float16 rounds each feature by at most 2^-11 of its
    value; the probes are fitted to max |gradient| <= 1e-4 (LinearProbe's tol) in both runs, so a prediction can
    only change for a point whose margin is within that perturbation. 0.1 points = 2 of the 2,000 test points (or 5
    of the 5,000 train points): the issue's bound, far inside every CI (the err_test CI is ~4 points wide here)."""
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("models:\n  - {name: r18, source: timm, model: resnet18, pretrained: false, image_size: 32}\n")
    fast = ["--n-boot", "50", "--fewshot-seeds", "1", "--shots", "5", "--fractions", "0.1", "--no-uncertainty",
            "--no-active", "--no-statistics", "--aug-views", "0", "--no-report", "--no-progress", "--jobs", "1"]
    boards = {}
    for dtype in ("float16", "float32"):
        out = tmp_path / dtype
        extra = [] if dtype == "float16" else ["--feature-dtype", "float32"]  # float16: the default flags
        assert run_cli("evaluate", "--zoo", str(zoo), "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
                       *fast, *extra) == 0
        boards[dtype] = pd.read_csv(out / "leaderboard.csv").iloc[0]
    cached = sorted(p.name for p in (tmp_path / "cache" / "features" / "r18").glob("*.json"))
    dtypes = [json.loads((tmp_path / "cache" / "features" / "r18" / n).read_text())["dtype"] for n in cached]
    assert sorted(dtypes) == ["float16", "float16", "float32", "float32"]  # train + test of each: no mixing
    a, b = boards["float16"], boards["float32"]
    # the point estimates (their bootstrap CI bounds are percentiles of 50 resamples: not what the bound is about)
    cols = ["usability", "probe_gen", "enc_gen", "agg_risk"] + [c for c in a.index if c.startswith("err_")
                                                                 and not c.endswith(("_lo", "_hi"))]
    assert {"err_train_train", "err_heldout", "err_test", "err_sub_test"} <= set(cols)
    assert 30 < b["err_test"] < 90  # a case where predictions can flip: neither separable nor chance
    diff = {c: abs(float(a[c]) - float(b[c])) for c in cols if np.isfinite(float(b[c]))}
    assert max(diff.values()) <= 0.1 + 1e-9, diff


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("img") / "d", n_train=3, n_test=2, size=24)
    return root


def test_float16_overflow_is_a_one_line_error_naming_the_model(tiny, tmp_path, capsys):
    """An encoder whose features exceed float16's range (+-65504): ``riskdecomp featurize`` with the default cache
    fails that model with one line naming it and the way out (exit 1); no cache file is written (never inf). With
    ``--feature-dtype float32`` the same features are cached."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)
    sd = model.state_dict()
    sd["layer4.1.bn2.bias"] = torch.full_like(sd["layer4.1.bn2.bias"], 1e6)  # the last block's output: ~1e6
    save_file(sd, str(tmp_path / "big.safetensors"))
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(f"models:\n  - {{name: big, source: checkpoint, architecture: resnet18, "
                   f"weights: {tmp_path / 'big.safetensors'}}}\n")
    args = ["featurize", "--zoo", str(zoo), "--dataset", f"imagefolder:{tiny}", "--cache-dir", str(tmp_path / "c"),
            "--no-progress"]
    capsys.readouterr()
    assert run_cli(*args) == 1  # an encoder that fails in featurize: one line naming it, exit 1 (README)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and lines[1] == "riskdecomp: 1 model(s) failed", lines
    err = lines[0]
    assert err.startswith("riskdecomp: model 'big' failed: ")
    assert "float16 range" in err and "65504" in err and "--feature-dtype float32" in err
    assert not list((tmp_path / "c" / "features" / "big").glob("*.npy"))
    assert run_cli(*args, "--feature-dtype", "float32") == 0
    files = list((tmp_path / "c" / "features" / "big").glob("*.npy"))
    assert len(files) == 2 and max(float(np.abs(np.load(f)).max()) for f in files) > 65504


def test_float16_and_float32_entries_have_different_keys(tiny, tmp_path):
    """The dtype is part of the cache key: each precision computes its own files once and reads only its own."""
    ds = load_dataset(f"imagefolder:{tiny}")
    e = parse_zoo({"models": [R18]})["r18"]

    def featurize_seeded(*a, **k):  # a random-init encoder: the same weights every time (as the runner seeds it)
        torch.manual_seed(0)
        return featurize(*a, **k)

    kw = dict(cache_dir=tmp_path, progress=False, device="cpu")
    f16 = featurize_seeded(e, ds, **kw)  # default: float16
    f32 = featurize_seeded(e, ds, dtype="float32", **kw)
    assert f16.forward_passes > 0 and f32.forward_passes > 0  # float32 did not reuse the float16 entry
    files = sorted((tmp_path / "features" / "r18").glob("*.npy"))
    assert len(files) == 4
    by_dtype = {str(np.load(f, mmap_mode="r").dtype) for f in files}
    assert by_dtype == {"float16", "float32"}
    again16, again32 = featurize_seeded(e, ds, **kw), featurize_seeded(e, ds, dtype="float32", **kw)
    assert again16.forward_passes == 0 and again32.forward_passes == 0
    assert np.array_equal(again16.x_train, f16.x_train) and np.array_equal(again32.x_train, f32.x_train)
    # in memory both come back float32; the float16 ones are the float32 ones rounded to float16
    assert f16.x_train.dtype == np.float32 and not np.array_equal(f16.x_train, f32.x_train)
    np.testing.assert_array_equal(f16.x_train, f32.x_train.astype(np.float16).astype(np.float32))
    mm = featurize(e, ds, mmap=True, **kw)
    assert isinstance(mm.x_train, np.memmap) and mm.x_train.dtype == np.float16 and not mm.x_train.flags.writeable
    with pytest.raises(Exception, match="feature dtype 'float64'"):
        featurize(e, ds, dtype="float64", **kw)


def test_memory_mapped_and_in_memory_loads_give_byte_identical_results(tmp_path):
    """Real features (random-init resnet18 on digits), float16 cache: ``decompose`` on the read-only memory maps
    ``featurize(mmap=True)`` returns and on in-memory arrays of the same values gives the same numbers, bit for
    bit (every scalar, the test probabilities): the working copy is the same float32 values either way."""
    ds = load_dataset("digits")
    e = parse_zoo({"models": [R18]})["r18"]
    torch.manual_seed(0)
    mm = featurize(e, ds, cache_dir=tmp_path, progress=False, device="cpu", mmap=True)
    assert isinstance(mm.x_train, np.memmap) and mm.x_train.dtype == np.float16
    kw = dict(grid=np.logspace(-3, 1, 4), n_boot=100, device="cpu")
    a = decompose(mm.x_train, mm.y_train, mm.x_test, mm.y_test, **kw)
    b = decompose(np.array(mm.x_train), mm.y_train, np.array(mm.x_test), mm.y_test, **kw)
    f32 = featurize(e, ds, cache_dir=tmp_path, progress=False, device="cpu")  # in-memory float32 of the same file
    c = decompose(f32.x_train, f32.y_train, f32.x_test, f32.y_test, **kw)
    for other in (b, c):
        assert json.dumps(_scalars(a), sort_keys=True) == json.dumps(_scalars(other), sort_keys=True)
        np.testing.assert_array_equal(a.test_pred_proba, other.test_pred_proba)


def _heap_peak(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decompose_holds_one_float32_working_copy(tmp_path):
    """numpy's allocations (tracemalloc; they do not depend on the machine) while decomposing cached features of
    60,000 x 64 (10,000 test, 3 classes, single held-out set): from float16 memory maps the peak is one float32
    working copy of the matrix plus per-point vectors (labels, losses, logits: ~0.3x at 3 classes and 64 dims),
    < 1.5x the float32 matrix; from float32 in memory, the loaded input plus that, < 2.5x. Before, the held-out
    fits' row subsets (fancy-indexed copies) and the probes' float64 mean/std temporaries took it to ~3.7x."""
    rng = np.random.default_rng(0)
    n, n_te, d, k = 60_000, 10_000, 64, 3
    y = rng.integers(0, k, n + n_te)
    x = (rng.standard_normal((n + n_te, d), dtype=np.float32) + rng.standard_normal((k, d), dtype=np.float32)[y])
    for dtype in ("float16", "float32"):
        for split, rows in (("train", slice(0, n)), ("test", slice(n, None))):
            write_cached(tmp_path / f"{split}-{dtype}.npy", storage_array(x[rows], dtype, "test"), {})
    matrix = x.nbytes
    del x
    kw = dict(grid=[0.1, 10.0], n_boot=10, device="cpu", holdout="single")
    peaks = {}
    for dtype, mmap in (("float16", True), ("float32", False)):
        def run():
            xtr = read_cached(tmp_path / f"train-{dtype}.npy", mmap=mmap)
            xte = read_cached(tmp_path / f"test-{dtype}.npy", mmap=mmap)
            decompose(xtr, y[:n], xte, y[n:], **kw)
        peaks[dtype] = _heap_peak(run) / matrix
    assert peaks["float16"] < 1.5, peaks
    assert peaks["float32"] < 2.5, peaks


# ----------------------------------------------------------------------- columns float16 would flatten (issue 24.3)
LOSSY_NOTICE = "vary too little for float16"


def _layernorm_zoo(tmp_path, name: str, bias, weight_scale: float = 1.0) -> str:
    """A zoo of one ``checkpoint`` entry: a random-init convnext_atto, whose pooled features leave through a
    LayerNorm (``head.norm``), with that LayerNorm's bias set to ``bias`` (a number or one value per column, 320)
    and its weight scaled by ``weight_scale``: every column is ``bias + weight * (normalized feature)``."""
    torch.manual_seed(0)
    sd = timm.create_model("convnext_atto", pretrained=False, num_classes=0).state_dict()
    sd["head.norm.bias"] = torch.as_tensor(bias, dtype=torch.float32).expand_as(sd["head.norm.bias"]).clone()
    sd["head.norm.weight"] = sd["head.norm.weight"] * weight_scale
    save_file(sd, str(tmp_path / f"{name}.safetensors"))
    zoo = tmp_path / f"{name}.yaml"
    zoo.write_text(f"models:\n  - {{name: {name}, source: checkpoint, architecture: convnext_atto, "
                   f"weights: {tmp_path / f'{name}.safetensors'}, image_size: 32}}\n")
    return str(zoo)


def _cached(cache, name) -> dict:
    """{split: (array, sidecar)} of one model's cache entries."""
    out = {}
    for side in sorted((cache / "features" / name).glob("*.json")):
        meta = json.loads(side.read_text())
        out[meta["split"]] = (np.load(side.with_suffix(".npy")), meta)
    return out


def _notices(caplog) -> list:
    return [r.getMessage() for r in caplog.records if LOSSY_NOTICE in r.getMessage()]


def test_features_with_a_large_common_offset_give_float32s_numbers_with_the_default_cache(tmp_path, caplog):
    """The issue's example: features that leave through a LayerNorm with bias 2000 and small variation (weight x
    0.05). float16's step at 2000 is 1, so the default cache stored each column as one constant and ``evaluate``
    read chance (agg_risk 89.8 vs 4.3 with ``--feature-dtype float32`` on digits). Now the matrix is stored as
    float32 under the float16 key, said once (one line naming the model and the columns), and every decomposition
    number equals the float32 run's (within the README's 0.1 points)."""
    zoo = _layernorm_zoo(tmp_path, "ln", 2000.0, weight_scale=0.05)
    fast = ["--n-boot", "20", "--fewshot-seeds", "1", "--shots", "5", "--fractions", "0.1", "--no-uncertainty",
            "--no-active", "--no-statistics", "--aug-views", "0", "--no-report", "--no-progress", "--jobs", "1"]
    boards, notices = {}, {}
    for dtype in ("float16", "float32"):
        caplog.clear()
        extra = [] if dtype == "float16" else ["--feature-dtype", "float32"]  # float16: the default flags
        assert run_cli("evaluate", "--zoo", zoo, "--dataset", "digits", "--out", str(tmp_path / dtype),
                       "--cache-dir", str(tmp_path / dtype / "cache"), *fast, *extra) == 0
        boards[dtype] = pd.read_csv(tmp_path / dtype / "leaderboard.csv").iloc[0]
        notices[dtype] = _notices(caplog)
    a, b = boards["float16"], boards["float32"]
    assert b["agg_risk"] < 30  # the features are informative: float32 reads them
    cols = ["usability", "probe_gen", "enc_gen", "agg_risk"] + [c for c in a.index if c.startswith("err_")
                                                                 and not c.endswith(("_lo", "_hi"))]
    diff = {c: abs(float(a[c]) - float(b[c])) for c in cols if np.isfinite(float(b[c]))}
    assert max(diff.values()) <= 0.1, diff
    said = notices["float16"]
    assert len(said) == 1, said  # train and test both widened: one notice
    assert "model 'ln'" in said[0] and "320 of 320 feature columns" in said[0], said
    assert "its train and test features are cached as float32" in said[0]
    assert not notices["float32"]
    default = _cached(tmp_path / "float16" / "cache", "ln")
    assert {s: (str(x.dtype), m["dtype"], m["lossy_columns"]) for s, (x, m) in default.items()} == {
        "train": ("float32", "float32", 320), "test": ("float32", "float32", 320)}


@pytest.mark.parametrize("case", ["mixed", "negative"])
def test_columns_float16_would_flatten_are_found_per_column_and_either_sign(tiny, tmp_path, caplog, case):
    """Beyond the example, through ``riskdecomp featurize`` with the default cache: ``mixed``: 40 columns with
    offset +2000, 40 with -2000 and 240 ordinary ones (bias 0) -- a few lossy columns make the whole matrix float32,
    and the notice counts them (80 of 320); ``negative``: every column at -2000. The stored arrays are exactly the
    ``--feature-dtype float32`` run's (the keys differ: float32 requests never read them)."""
    bias = torch.zeros(320)
    if case == "mixed":
        bias[:40], bias[40:80] = 2000.0, -2000.0
    else:
        bias[:] = -2000.0
    lossy = 80 if case == "mixed" else 320
    zoo = _layernorm_zoo(tmp_path, "ln", bias, weight_scale=0.05)
    args = ["featurize", "--zoo", zoo, "--dataset", f"imagefolder:{tiny}", "--no-progress"]
    caplog.clear()
    assert run_cli(*args, "--cache-dir", str(tmp_path / "c16")) == 0
    notices = _notices(caplog)
    assert len(notices) == 1 and f"{lossy} of 320 feature columns" in notices[0], notices
    assert run_cli(*args, "--cache-dir", str(tmp_path / "c32"), "--feature-dtype", "float32") == 0
    f16, f32 = _cached(tmp_path / "c16", "ln"), _cached(tmp_path / "c32", "ln")
    for split in ("train", "test"):
        (x16, m16), (x32, m32) = f16[split], f32[split]
        assert x16.dtype == np.float32 and m16["dtype"] == "float32" and m16["lossy_columns"] == lossy
        np.testing.assert_array_equal(x16, x32)
        assert "lossy_columns" not in m32
    assert set(p.name for p in (tmp_path / "c16" / "features" / "ln").glob("*.npy")).isdisjoint(
        p.name for p in (tmp_path / "c32" / "features" / "ln").glob("*.npy"))
    caplog.clear()  # a rerun reads the float32 entries: nothing recomputed, nothing said again
    assert run_cli(*args, "--cache-dir", str(tmp_path / "c16")) == 0
    assert not _notices(caplog)


def test_ordinary_features_are_still_stored_as_float16(tiny, tmp_path, caplog):
    """The same encoder with its LayerNorm as initialized (bias 0): every column keeps its variation in float16,
    so the default cache stores float16 -- the float32 values rounded, byte for byte as before (same sidecar
    keys), with nothing said."""
    zoo = _layernorm_zoo(tmp_path, "ln", 0.0)
    args = ["featurize", "--zoo", zoo, "--dataset", f"imagefolder:{tiny}", "--no-progress"]
    caplog.clear()
    assert run_cli(*args, "--cache-dir", str(tmp_path / "c16")) == 0
    assert run_cli(*args, "--cache-dir", str(tmp_path / "c32"), "--feature-dtype", "float32") == 0
    assert not _notices(caplog)
    f16, f32 = _cached(tmp_path / "c16", "ln"), _cached(tmp_path / "c32", "ln")
    for split in ("train", "test"):
        (x16, m16), (x32, _) = f16[split], f32[split]
        assert x16.dtype == np.float16 and m16["dtype"] == "float16" and "lossy_columns" not in m16
        np.testing.assert_array_equal(x16, x32.astype(np.float16))


def test_storage_plan_compares_each_columns_rounding_noise_with_its_spread(caplog):
    """Per column, the float16 rounding noise against the column's spread, whatever the sign or size of its
    offset: N(offset, 1) columns keep float16 up to an offset of ~100 (rounding noise <= 1.8% of their spread at
    64) and are stored as float32 from 128 on (float16's step there is 1/8: 3.6%); a spread-proportional column (N(0, 1) x 1000) is fine at any magnitude; a constant column is never
    lossy; and one lossy column among ordinary ones is enough for the matrix."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((4000, 1), dtype=np.float32)
    for offset, want in ((0, "float16"), (2, "float16"), (-20, "float16"), (64, "float16"), (-64, "float16"),
                         (200, "float32"), (-200, "float32"), (-2000, "float32"), (60000, "float32")):
        assert storage_plan(z + np.float32(offset), "float16", "t") == (want, int(want == "float32")), offset
    assert storage_plan(z * 1000, "float16", "t") == ("float16", 0)
    assert storage_plan(np.full((100, 3), 2000.0, np.float32), "float16", "t") == ("float16", 0)
    mixed = np.hstack([rng.standard_normal((4000, 7), dtype=np.float32), z + np.float32(-2000)])
    assert storage_plan(mixed, "float16", "t") == ("float32", 1)
    assert storage_array(mixed, "float16", "t").dtype == np.float32
    assert storage_plan(mixed, "float32", "t") == ("float32", 0)
    # float16-subnormal values (step 6e-8) spread by 2e-7 are flattened too: float32 keeps every digit, and the
    # "fewer significant digits" warning is not given for what is not done
    caplog.clear()
    assert storage_plan(z * np.float32(2e-7), "float16", "t") == ("float32", 1)
    assert not [r for r in caplog.records if "subnormal" in r.getMessage()]
