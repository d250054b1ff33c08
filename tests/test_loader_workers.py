"""Image loading inside parallel jobs (issue 13): a DataLoader with worker processes, started in a joblib/loky job
or a daemonic (dask / multiprocessing pool) worker, used to fail every model ("'Process' object has no attribute
'env'" in loky, "daemonic processes are not allowed to have children" in dask). Real JPEG files, default and explicit
worker counts; the features must equal the ones computed in the main process without workers."""

import logging
import multiprocessing as mp

import numpy as np
import pytest
from PIL import Image

from riskdecomp.features.cache import _num_workers, encode_group
from riskdecomp.features.datasets import load_imagefolder
from riskdecomp.features.encoders import build_encoder
from riskdecomp.zoo import TimmEntry


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 40)):  # 80 test images: 'auto' asks for workers (>= 64)
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / split / c / f"{i}.jpg")
    return root


def _encode(root, num_workers):
    ds = load_imagefolder(root)
    enc = build_encoder(TimmEntry(name="r", source="timm", model="test_resnet", pretrained=False))
    z, errors, _ = encode_group([enc], ds.test, num_workers=num_workers, progress=False, batch_size=32)
    assert not errors
    return z["r"]


@pytest.fixture(scope="module")
def reference(jpeg_folder):
    import torch

    torch.manual_seed(0)
    return _encode(jpeg_folder, 0)


def _seeded_encode(root, num_workers):
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    return _encode(root, num_workers)


@pytest.mark.parametrize("num_workers", ["auto", 2])
def test_loader_in_a_loky_job(jpeg_folder, reference, num_workers):
    from joblib import Parallel, delayed

    (z,) = Parallel(n_jobs=2, backend="loky")(delayed(_seeded_encode)(jpeg_folder, num_workers) for _ in range(1))
    np.testing.assert_allclose(z, reference, rtol=1e-5, atol=1e-6)


def _workers_in_daemon(root, num_workers):
    logging.basicConfig()
    split = load_imagefolder(root).test
    return _num_workers(split, num_workers), _seeded_encode(root, num_workers)


def test_loader_in_a_daemonic_worker_falls_back_to_in_process(jpeg_folder, reference):
    """A multiprocessing pool's workers are daemonic, like dask's: no child processes; an explicit count is
    replaced by 0 (with a warning), not a crash."""
    with mp.get_context("fork").Pool(1) as pool:
        (nw, ctx), z = pool.apply(_workers_in_daemon, (jpeg_folder, 2))
    assert (nw, ctx) == (0, None)
    np.testing.assert_allclose(z, reference, rtol=1e-5, atol=1e-6)


def test_main_process_keeps_its_workers(jpeg_folder):
    split = load_imagefolder(jpeg_folder).test
    assert _num_workers(split, 3) == (3, None)
    assert _num_workers(split, "auto")[0] >= 1
    assert _num_workers(load_imagefolder(jpeg_folder).train, "auto") == (0, None)  # 8 images: nothing to overlap
