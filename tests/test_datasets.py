"""Datasets: the embedded digits default, image folders (with corrupt files), spec errors."""

import numpy as np
import pytest
from PIL import Image

from riskdecomp.features.datasets import load_dataset
from riskdecomp.utils.errors import DatasetError


def make_folder(root, classes=("cat", "dog"), n_train=3, n_test=2, size=16, test_name="test", seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), (test_name, n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def test_digits_is_fixed_stratified_and_rgb():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.classes == [str(i) for i in range(10)]
    assert len(a.train) + len(a.test) == 1797 and len(a.test) == 540
    assert np.array_equal(a.train.labels, b.train.labels) and a.fingerprint == b.fingerprint
    # stratified: every class in both splits with the same proportions (within one image)
    tr, te = np.bincount(a.train.labels), np.bincount(a.test.labels)
    assert np.all(np.abs(te / len(a.test) - tr / len(a.train)) < 0.01)
    img, label = a.train[0]
    assert img.mode == "RGB" and img.size == (32, 32) and label == a.train.labels[0]
    x = a.train.to_uint8()
    assert x.shape == (len(a.train), 3, 32, 32) and x.dtype.is_floating_point is False
    # the split is fixed: --seed changes neither the split nor the fingerprint (feature-cache key)
    c = load_dataset("digits", seed=1)
    assert c.fingerprint == a.fingerprint and np.array_equal(c.train.labels, a.train.labels)


def test_imagefolder_reads_classes_labels_and_val_alias(tmp_path):
    make_folder(tmp_path / "d", classes=("b_class", "a_class"), test_name="val")
    ds = load_dataset(f"imagefolder:{tmp_path / 'd'}")
    assert ds.classes == ["a_class", "b_class"]
    assert len(ds.train) == 6 and len(ds.test) == 4
    assert list(ds.train.labels) == [0, 0, 0, 1, 1, 1]
    img, y = ds.test[3]
    assert img.size == (16, 16) and y == 1
    assert ds.train.to_uint8(size=8).shape == (6, 3, 8, 8)
    # the fingerprint follows the files
    fp = ds.fingerprint
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "d" / "train" / "a_class" / "new.png")
    assert load_dataset(f"imagefolder:{tmp_path / 'd'}").fingerprint != fp


def test_corrupt_image_is_named_or_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = root / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = load_dataset(f"imagefolder:{root}")
    idx = [i for i, p in enumerate(ds.train.paths) if p.name == "broken.jpg"][0]
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds.train[idx]
    with pytest.warns(UserWarning, match="skipped 1 corrupt"):
        ds2 = load_dataset(f"imagefolder:{root}", on_corrupt="skip")
    assert len(ds2.train) == 6 and ds2.skipped == [str(bad)]


@pytest.mark.parametrize("spec,needle", [
    ("mnist", "unknown dataset"),
    ("imagefolder:/definitely/not/here", "no such directory"),
    ("cifar10:/definitely/not/here", "cifar10"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(DatasetError, match=needle):
        load_dataset(spec)


def test_test_class_absent_from_train_and_empty_split(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "test" / "bird").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "test" / "bird" / "0.png")
    with pytest.raises(DatasetError, match="bird"):
        load_dataset(f"imagefolder:{root}")
    empty = tmp_path / "e"
    (empty / "train" / "a").mkdir(parents=True)
    (empty / "test" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        load_dataset(f"imagefolder:{empty}")
