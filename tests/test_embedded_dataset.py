"""The embedded default dataset `cifar10-mini`: content, provenance (byte-identical to the CIFAR-10 JPEG source),
integrity check, reproducible build, shipped in the wheel; the default --dataset; seed-independent splits and
fingerprints."""

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from riskdecomp.features import datasets
from riskdecomp.features.datasets import (
    CIFAR10_MINI,
    CIFAR10_MINI_SHA256,
    DEFAULT_DATASET,
    load_cifar10_mini,
    load_dataset,
)
from riskdecomp.utils.errors import DatasetError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def mini():
    return load_dataset("cifar10-mini")


def test_cifar10_mini_is_balanced_rgb_and_the_default(mini):
    assert DEFAULT_DATASET == "cifar10-mini" and mini.name == "cifar10-mini" and mini.classes == CLASSES
    assert len(mini.train) == 5000 and len(mini.test) == 2000
    assert np.bincount(mini.train.labels).tolist() == [500] * 10
    assert np.bincount(mini.test.labels).tolist() == [200] * 10
    img, y = mini.train[0]
    assert img.mode == "RGB" and img.size == (32, 32) and y == 0
    assert mini.train.to_uint8(16).shape == (5000, 3, 16, 16)
    # natural images, not a constant: CIFAR-10's per-channel train mean is ~(125, 123, 114)
    assert np.allclose(mini.train.images.reshape(-1, 3).mean(0), [125, 123, 114], atol=4)
    assert CIFAR10_MINI.stat().st_size <= 10 * 2 ** 20


def test_cli_and_api_default_to_the_embedded_dataset():
    import inspect

    from riskdecomp.cli import cli
    from riskdecomp.runner.pipeline import evaluate

    assert inspect.signature(evaluate).parameters["dataset"].default == DEFAULT_DATASET
    for cmd in ("evaluate", "featurize", "uncertainty", "active", "pretrain"):
        opt = next(p for p in cli.commands[cmd].params if p.name == "dataset")
        assert opt.default == DEFAULT_DATASET, cmd


@pytest.mark.shared
def test_images_are_the_source_jpegs_byte_for_byte(shared_dir):
    """Every test image is the CIFAR-10 JPEG file test/<class>/<k:04d>.jpg of the shared tarball."""
    with np.load(CIFAR10_MINI, allow_pickle=False) as z:
        jpeg, offsets, labels, split = z["jpeg"], z["offsets"], z["labels"], z["split"]
    test_idx = np.flatnonzero(split == 1)
    want = {}
    for i, k in zip(test_idx, np.concatenate([np.arange(200)] * 10)):
        want[f"test/{CLASSES[labels[i]]}/{k:04d}.jpg"] = jpeg[offsets[i]:offsets[i + 1]].tobytes()
    found = 0
    with tarfile.open(shared_dir / "data" / "cifar10-jpg" / "cifar10_test_jpg.tar.gz") as tar:
        for m in tar:
            name = m.name.lstrip("./")
            if name in want:
                assert tar.extractfile(m).read() == want[name], name
                found += 1
    assert found == 2000


@pytest.mark.shared
def test_build_script_reproduces_the_shipped_file(shared_dir, tmp_path):
    out = tmp_path / "mini.npz"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "build_cifar10_mini.py"), "--src",
                    str(shared_dir / "data" / "cifar10-jpg"), "--out", str(out)], check=True, capture_output=True)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == CIFAR10_MINI_SHA256


def test_damaged_or_missing_data_is_a_one_line_error(tmp_path):
    bad = tmp_path / "mini.npz"
    blob = bytearray(CIFAR10_MINI.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match="damaged"):
        load_cifar10_mini(path=bad)
    with pytest.raises(DatasetError, match="cannot read"):
        load_cifar10_mini(path=tmp_path / "absent.npz")
    assert bad.read_bytes() == bytes(blob)  # nothing touched


def test_no_split_or_fingerprint_depends_on_the_seed(mini, tmp_path):
    from test_datasets import make_folder

    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=7)
    assert np.array_equal(a.train.images, b.train.images) and np.array_equal(a.test.labels, b.test.labels)
    assert a.fingerprint == b.fingerprint
    assert load_dataset("cifar10-mini", seed=3).fingerprint == mini.fingerprint
    make_folder(tmp_path / "d")
    spec = f"imagefolder:{tmp_path / 'd'}"
    assert load_dataset(spec, seed=0).fingerprint == load_dataset(spec, seed=5).fingerprint
    assert datasets.DIGITS_SPLIT_SEED == 0


@pytest.mark.slow
def test_the_wheel_ships_the_dataset_and_its_source_note(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("riskdecomp-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "riskdecomp/data/cifar10_mini.npz" in names and "riskdecomp/data/CIFAR10_MINI_SOURCE.txt" in names
    assert wheel.stat().st_size <= 15 * 2 ** 20
