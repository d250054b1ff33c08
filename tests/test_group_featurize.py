"""Decode once, many encoders (features.featurize_group, `riskdecomp featurize` over a zoo) and the device-side JPEG
decoding path (riskdecomp/features/decode), on real JPEGs from the shared data folder."""

import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pretrain import _extract
from zoo_factory import run_cli

from riskdecomp.features import cache as F
from riskdecomp.features.datasets import FileSplit, load_dataset
from riskdecomp.features.decode import DevicePreprocess, device_plan, preprocessing_key

# timm architectures with weights files the fixture writes (seeded random init: a run is reproducible), fed 32 px.
# r18, r34 and reg share preprocessing (resize 32, crop 32, bicubic, ImageNet mean/std); vit normalizes with
# mean = std = 0.5: a group of its own.
ARCHS = {"r18": "resnet18", "r34": "resnet34", "reg": "regnety_002", "vit": "vit_tiny_patch16_224"}
ZOO = textwrap.dedent("""
    defaults: {source: timm, image_size: 32}
    models:
""") + "".join(f"  - {{name: {n}, model: {a}, weights: {n}.safetensors}}\n" for n, a in ARCHS.items())
GROUPS = [["r18", "r34", "reg"], ["vit"]]


@pytest.fixture(scope="module")
def cifar(shared_dir, tmp_path_factory):
    """A real-JPEG imagefolder: 3 train and 2 test CIFAR-10 images per class (32 x 32)."""
    root = tmp_path_factory.mktemp("cifar")
    src = shared_dir / "data" / "cifar10-jpg"
    _extract(src / "cifar10_train_jpg.tar.gz", root / "train", 3)
    _extract(src / "cifar10_test_jpg.tar.gz", root / "test", 2)
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    for name, arch in ARCHS.items():
        m = timm.create_model(arch, pretrained=False, num_classes=0, **({"img_size": 32} if "vit" in arch else {}))
        save_file(m.state_dict(), str(root.parent / f"{name}.safetensors"))
    (root.parent / "zoo.yaml").write_text(ZOO)
    return root


@pytest.fixture(scope="module")
def clean(cifar, tmp_path_factory):
    """The cache files of an uninterrupted `riskdecomp featurize` of the zoo."""
    cache = tmp_path_factory.mktemp("clean")
    assert _featurize(cifar, cache) == 0
    return _files(cache)


@pytest.fixture
def spy(monkeypatch):
    """Records each group pass (names, split) and counts images decoded and transformed for the encoders (a
    dataset item; building an encoder also opens the first image to learn the dataset's image size)."""
    seen = {"passes": [], "decoded": 0}
    encode_group, getitem = F.encode_group, FileSplit.__getitem__

    def spy_group(encoders, split, **kw):
        seen["passes"].append((sorted(e.name for e in encoders), split.split))
        return encode_group(encoders, split, **kw)

    def spy_getitem(self, index):
        seen["decoded"] += 1
        return getitem(self, index)

    monkeypatch.setattr(F, "encode_group", spy_group)
    monkeypatch.setattr(FileSplit, "__getitem__", spy_getitem)
    return seen


def _featurize(root, cache, *extra):
    return run_cli("featurize", "--zoo", str(root.parent / "zoo.yaml"), "--dataset", f"imagefolder:{root}",
                   "--cache-dir", str(cache), "--no-progress", *extra)


def _files(cache) -> dict:
    base = Path(cache) / "features"
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*"))
            if p.suffix in (".npy", ".json")}


def test_group_featurization_is_byte_identical_to_one_by_one_and_decodes_once_per_group(cifar, tmp_path, spy):
    n_images = 30 + 20
    assert _featurize(cifar, tmp_path / "group") == 0
    assert sorted(spy["passes"]) == sorted((g, s) for g in GROUPS for s in ("train", "test"))
    assert spy["decoded"] == len(GROUPS) * n_images  # once per group, not once per encoder
    spy["passes"].clear()
    spy["decoded"] = 0
    for name in ("r18", "r34", "reg", "vit"):
        assert _featurize(cifar, tmp_path / "single", "--models", name) == 0
    assert spy["decoded"] == 4 * n_images
    grouped, single = _files(tmp_path / "group"), _files(tmp_path / "single")
    assert len(grouped) == 4 * 2 * 2  # 4 encoders x 2 splits x (array + sidecar)
    assert grouped.keys() == single.keys()
    for k in grouped:  # arrays and sidecars (which hold the arrays' SHA-256) byte for byte
        assert grouped[k] == single[k], k
    # a rerun reads every cache entry: no pass, no image decoded
    spy["passes"].clear()
    spy["decoded"] = 0
    assert _featurize(cifar, tmp_path / "group") == 0
    assert spy["passes"] == [] and spy["decoded"] == 0


class _Crash(torch.nn.Module):
    """An encoder module that raises ``exc`` on its ``at``-th forward call (the second: the test split)."""

    def __init__(self, inner, exc, at=2):
        super().__init__()
        self.inner, self.exc, self.at, self.calls = inner, exc, at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return self.inner(x)


@pytest.mark.parametrize("victim,exc,status", [("reg", RuntimeError("simulated crash"), 1),
                                               ("vit", KeyboardInterrupt(), 130)])
def test_a_killed_group_pass_resumes_per_encoder(cifar, clean, tmp_path, monkeypatch, spy, victim, exc, status,
                                                 capsys):
    """A crash inside one encoder's forward (the others of its group go on and are written) and an interrupt
    (Ctrl-C: the pass stops there; what was written before stays): the rerun computes only what is missing and
    the files equal a clean run's."""
    build = F.build_encoder

    def crashing_build(entry, **kw):
        enc = build(entry, **kw)
        if entry.name == victim:
            enc.module = _Crash(enc.module, exc)
        return enc

    monkeypatch.setattr(F, "build_encoder", crashing_build)
    assert _featurize(cifar, tmp_path / "cache") == status
    if status == 1:  # a crash: one line naming the encoder (no traceback), exit status 1
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert "riskdecomp: model 'reg' failed: RuntimeError: simulated crash" in err.splitlines()
    left = _files(tmp_path / "cache")
    missing = {k for k in clean if k not in left}
    assert {k.split("/")[0] + "/" + k.split("-")[-2] for k in missing} == {f"{victim}/test"}  # only the victim's test
    assert not list((tmp_path / "cache").rglob("*.tmp"))  # no partial file left behind
    monkeypatch.setattr(F, "build_encoder", build)
    spy["passes"].clear()
    assert _featurize(cifar, tmp_path / "cache") == 0
    assert spy["passes"] == [([victim], "test")]
    assert _files(tmp_path / "cache") == clean


def test_preprocessing_keys_group_equal_pipelines_only():
    import timm
    from torchvision import transforms as T

    from riskdecomp.sources.timm import timm_transform
    from riskdecomp.pretrain import eval_transform

    def key(arch, size=None):
        return preprocessing_key(timm_transform(timm.create_model(arch, pretrained=False, num_classes=0), size))

    assert key("resnet18") == key("resnet34")  # same timm data config: crop 0.95, bicubic, ImageNet mean/std
    assert key("resnet18") != key("resnet26")  # crop 0.875: another resize
    assert key("resnet18") != key("vit_tiny_patch16_224")  # another normalization
    assert key("resnet18", 32) == key("regnety_002", 32) != key("resnet18", 64)
    assert key("test_resnet") != key("test_vit")  # bilinear vs bicubic
    assert preprocessing_key(eval_transform(None, 32)) == preprocessing_key(eval_transform(None, 32))
    assert preprocessing_key(eval_transform(None, 32)) != preprocessing_key(eval_transform(None, 16))
    opaque = T.Compose([T.Lambda(lambda im: im), T.ToTensor()])  # holds a function: not comparable by content
    assert preprocessing_key(opaque) != preprocessing_key(T.Compose([T.Lambda(lambda im: im), T.ToTensor()]))


# ------------------------------------------------------------------------------------------------ device decoding
@pytest.fixture(scope="module")
def imagenette(shared_dir, tmp_path_factory):
    """Real Imagenette JPEGs (~224 px on the short side, various aspect ratios): resized by every transform."""
    root = tmp_path_factory.mktemp("inet")
    src = shared_dir / "data" / "imagenette2-224-subset" / "imagenette2_224_val.tar.gz"
    _extract(src, root / "all", 2)
    for d in sorted((root / "all").iterdir()):  # per class: one train, one test image
        for split, f in zip(("train", "test"), sorted(d.iterdir())):
            (root / split / d.name).mkdir(parents=True)
            shutil.move(str(f), str(root / split / d.name / f.name))
    return load_dataset(f"imagefolder:{root}")


def _inputs(encoder, split, decode):
    return torch.cat(list(F.input_batches(encoder, split, device="cpu", batch_size=4, num_workers=0,
                                          decode=decode)))


@pytest.mark.parametrize("arch", ["test_resnet", "resnet18"])
def test_device_decoding_matches_the_pil_path_within_resize_rounding(imagenette, arch):
    """The device path (bytes -> decode_jpeg -> tensor resize/crop/normalize), run on CPU tensors, against PIL +
    the encoder's transform. Both decoders are libjpeg-turbo here, so the decoded pixels are equal; the difference
    is the resize: torchvision's antialiased tensor resize implements PIL's separable filters but rounds
    differently. Bilinear: every pixel within 1 of 255 (one rounding step). Bicubic: PIL clips its 8-bit
    intermediate between the horizontal and vertical pass, torch does not, so overshooting pixels at sharp edges
    differ more; they are rare (< 0.1 %) and the mean difference stays below half a level. The encoder's features
    then differ by a fraction of a percent (bound 1 %, cosine >= 0.9999): the input moved by ~0.1 % of its range."""
    import timm

    from riskdecomp.features.encoders import Encoder
    from riskdecomp.sources.timm import timm_transform

    model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    enc = Encoder(arch, model, timm_transform(model), identity=arch)
    plan = device_plan(imagenette.test, enc.transform, "cpu", decode="device")
    assert plan is not None and plan.resize is not None and plan.crop is not None
    dev, pil = _inputs(enc, imagenette.test, "device"), _inputs(enc, imagenette.test, "cpu")
    assert dev.shape == pil.shape
    levels = ((dev - pil) * torch.tensor(plan.std)[:, None, None] * 255).abs()
    if plan.interpolation == "bilinear":
        assert levels.max() <= 1 + 1e-3
    else:
        assert levels.mean() < 0.5 and (levels > 1 + 1e-3).float().mean() < 1e-3
    with torch.inference_mode():
        za, zb = model(dev), model(pil)
    assert ((za - zb).norm(dim=1) / zb.norm(dim=1)).max() < 1e-2
    assert torch.nn.functional.cosine_similarity(za, zb).min() > 0.9999


def test_device_path_only_for_jpeg_files_on_cuda_else_the_cpu_path(imagenette, tmp_path, monkeypatch):
    import timm
    from test_datasets import make_folder

    from riskdecomp.sources.timm import timm_transform
    from riskdecomp.pretrain import eval_transform

    t = timm_transform(timm.create_model("test_resnet", pretrained=False, num_classes=0))
    jpeg = imagenette.test
    assert isinstance(device_plan(jpeg, t, "cuda"), DevicePreprocess)  # what a GPU run takes
    assert isinstance(device_plan(jpeg, t, "cuda:1"), DevicePreprocess)
    assert device_plan(jpeg, t, "cpu") is None and device_plan(jpeg, t, "mps") is None  # no CUDA: PIL
    assert device_plan(jpeg, t, "cuda", decode="cpu") is None
    png = load_dataset(f"imagefolder:{make_folder(tmp_path / 'png')}").test
    assert device_plan(png, t, "cuda") is None and device_plan(png, t, "cpu", decode="device") is None
    assert device_plan(load_dataset("digits").test, t, "cuda") is None  # in-memory images
    assert device_plan(jpeg, eval_transform(None, 32), "cuda") is None  # a transform without a tensor form
    # on this (CPU) machine, featurize takes the PIL path: the device decoder is never called
    import torchvision.io

    def no_decode(*a, **k):
        raise AssertionError("decode_jpeg called on the CPU path")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_decode)
    e = _entry("test_resnet")
    f = F.featurize(e, imagenette, cache_dir=tmp_path / "c", device="cpu", progress=False)
    assert f.forward_passes == 2 and np.isfinite(f.x_train).all()


def _entry(arch):
    from riskdecomp.zoo import parse_zoo

    return parse_zoo({"models": [{"name": "m", "source": "timm", "model": arch, "pretrained": False}]})["m"]


def test_device_path_reads_bytes_in_workers_and_falls_back_to_pil_for_a_batch_it_cannot_decode(imagenette, tmp_path,
                                                                                             caplog):
    """Loader workers read encoded bytes (lists of 1-D uint8 tensors); a PNG behind a .jpg name makes decode_jpeg
    fail: that batch is decoded by PIL with the encoder's own transform (exactly the CPU path), with a warning."""
    from PIL import Image

    from riskdecomp.features.decode import device_batches
    from riskdecomp.features.encoders import build_encoder

    root = tmp_path / "d"
    for split, paths in (("train", imagenette.train.paths), ("test", imagenette.test.paths[:4])):
        for p in paths:
            (root / split / p.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(p, root / split / p.parent.name / p.name)
    bad = root / "test" / imagenette.test.paths[0].parent.name / "zz_png.jpg"
    with Image.open(imagenette.test.paths[0]) as im:
        im.save(bad, format="PNG")
    ds = load_dataset(f"imagefolder:{root}")
    enc = build_encoder(_entry("test_resnet"))
    plan = device_plan(ds.test, enc.transform, "cpu", decode="device")
    assert plan is not None
    with caplog.at_level("WARNING"):
        batches = list(device_batches(ds.test, plan, enc.transform, device="cpu", batch_size=2,
                                      loader_kwargs={"num_workers": 2}))
    pil = _inputs(enc, ds.test, "cpu")
    assert [len(b) for b in batches] == [2, 2, 1]
    last = ds.test.paths.index(bad) // 2
    assert torch.equal(batches[last], pil[2 * last:2 * last + len(batches[last])])  # the PIL path, bit for bit
    assert "device JPEG decoding failed" in caplog.text
