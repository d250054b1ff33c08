"""Encoders from each source kind, and the feature cache (zero forward passes on a rerun, recompute when corrupt)."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from test_datasets import make_folder

from riskdecomp.features.cache import featurize, load_features_npz
from riskdecomp.features.datasets import load_dataset
from riskdecomp.features.encoders import build_encoder
from riskdecomp.utils.errors import FeatureError, RiskdecompError, WeightsError
from riskdecomp.zoo import parse_zoo


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = make_folder(tmp_path_factory.mktemp("img") / "d", n_train=3, n_test=2, size=24)
    return load_dataset(f"imagefolder:{root}")


@pytest.fixture(scope="module")
def r18_weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False)  # with its classifier, as a real checkpoint has
    save_file(model.state_dict(), str(d / "r18.safetensors"))
    torch.save(model.state_dict(), d / "r18.pt")
    return d


def entry(**kw):
    return parse_zoo({"models": [{"name": "m", **kw}]})["m"]


class Counter(torch.nn.Module):
    """Wraps an encoder module and counts forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_timm_local_weights_cache_hit_and_truncated_cache_recompute(tiny, r18_weights, tmp_path):
    e = entry(source="timm", model="resnet18", weights=str(r18_weights / "r18.safetensors"))
    enc = build_encoder(e, dataset=tiny)
    # the weights file was really loaded (not a random init)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    from safetensors.torch import load_file

    sd = {k: v for k, v in load_file(str(r18_weights / "r18.safetensors")).items() if not k.startswith("fc.")}
    ref.load_state_dict(sd)
    p0 = next(enc.module.parameters())
    assert torch.equal(p0, next(ref.parameters()))
    counted = Counter(enc.module)
    enc.module = counted
    f1 = featurize(e, tiny, cache_dir=tmp_path, encoder=enc, progress=False)
    assert f1.x_train.shape == (6, 512) and f1.x_test.shape == (4, 512)
    assert counted.calls > 0 and f1.forward_passes > 0
    calls = counted.calls
    f2 = featurize(e, tiny, cache_dir=tmp_path, encoder=enc, progress=False)
    assert counted.calls == calls and f2.forward_passes == 0  # zero forward passes on the second run
    assert np.array_equal(f1.x_train, f2.x_train) and np.array_equal(f1.y_test, f2.y_test)
    # truncate the cached train file: detected, recomputed cleanly, same numbers
    cached = sorted((tmp_path / "features" / "m").glob("*-train-*.npy"))
    assert len(cached) == 1
    data = cached[0].read_bytes()
    cached[0].write_bytes(data[: len(data) // 2])
    f3 = featurize(e, tiny, cache_dir=tmp_path, encoder=enc, progress=False)
    assert counted.calls > calls and f3.forward_passes > 0
    np.testing.assert_allclose(f3.x_train, f1.x_train, rtol=1e-5, atol=1e-5)
    # a flipped byte with the right length is caught by the checksum
    data = bytearray(cached[0].read_bytes())
    data[-3] ^= 0xFF
    cached[0].write_bytes(bytes(data))
    calls = counted.calls
    featurize(e, tiny, cache_dir=tmp_path, encoder=enc, progress=False)
    assert counted.calls > calls


def test_cache_key_follows_weights_and_representation(tiny, r18_weights, tmp_path):
    a = build_encoder(entry(source="timm", model="resnet18", weights=str(r18_weights / "r18.safetensors")))
    b = build_encoder(entry(source="timm", model="resnet18", pretrained=False))
    assert a.identity != b.identity
    v1 = build_encoder(entry(source="timm", model="vit_tiny_patch16_224", pretrained=False, representation="cls",
                             model_kwargs={"img_size": 32}))
    v2 = build_encoder(entry(source="timm", model="vit_tiny_patch16_224", pretrained=False, representation="cls+avg",
                             model_kwargs={"img_size": 32}))
    assert v1.identity != v2.identity


@pytest.mark.parametrize("rep,dim", [("pooled", 192), ("cls", 192), ("avg", 192), ("cls+avg", 384), ("4xcls", 768)])
def test_vit_representations(rep, dim):
    e = entry(source="timm", model="vit_tiny_patch16_224", pretrained=False, representation=rep, model_kwargs={"img_size": 32})
    enc = build_encoder(e)
    with torch.inference_mode():
        z = enc.module(torch.randn(2, 3, 32, 32))
    assert z.shape == (2, dim)
    if rep == "cls+avg":  # the first half is the class token
        cls = build_encoder(entry(source="timm", model="vit_tiny_patch16_224", pretrained=False, representation="cls",
                                  model_kwargs={"img_size": 32}))
        cls.module.load_state_dict(enc.module.state_dict())
        x = torch.randn(2, 3, 32, 32)
        with torch.inference_mode():
            assert torch.allclose(enc.module(x)[:, :192], cls.module(x), atol=1e-5)


def test_cls_on_a_cnn_is_refused():
    with pytest.raises(RiskdecompError, match="'cls'"):
        build_encoder(entry(source="timm", model="resnet18", pretrained=False, representation="cls"))


def test_checkpoint_source_safetensors_and_weights_only_pt(tiny, r18_weights, tmp_path):
    for fname in ("r18.safetensors", "r18.pt"):
        e = entry(source="checkpoint", architecture="resnet18", weights=str(r18_weights / fname))
        f = featurize(e, tiny, cache_dir=tmp_path / fname, progress=False)
        assert f.x_train.shape == (6, 512) and np.isfinite(f.x_train).all()
    # both files hold the same weights: same features
    a = featurize(entry(source="checkpoint", architecture="resnet18", weights=str(r18_weights / "r18.pt")), tiny,
                  cache_dir=tmp_path / "r18.pt", progress=False)
    b = featurize(entry(source="checkpoint", architecture="resnet18", weights=str(r18_weights / "r18.safetensors")),
                  tiny, cache_dir=tmp_path / "r18.safetensors", progress=False)
    np.testing.assert_allclose(a.x_test, b.x_test, rtol=1e-6)


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /tmp/riskdecomp_pwned",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"weight": Evil()}, bad)
    e = entry(source="checkpoint", architecture="resnet18", weights=str(bad))
    with pytest.raises(WeightsError, match="refusing"):
        build_encoder(e)


def test_checkpoint_wrong_architecture_and_missing_file(r18_weights, tmp_path):
    with pytest.raises(WeightsError, match="do not fit architecture 'resnet34'"):
        build_encoder(entry(source="checkpoint", architecture="resnet34", weights=str(r18_weights / "r18.safetensors")))
    with pytest.raises(WeightsError, match="not found"):
        build_encoder(entry(source="checkpoint", architecture="resnet18", weights=str(tmp_path / "none.safetensors")))
    with pytest.raises(WeightsError, match="not found"):
        build_encoder(entry(source="timm", model="resnet18", weights=str(tmp_path / "none.safetensors")))


def test_features_npz_source(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "f.npz"
    np.savez(p, x_train=rng.normal(size=(20, 4)), y_train=np.arange(20) % 2, x_test=rng.normal(size=(6, 4)),
             y_test=np.arange(6) % 2)
    f = featurize(entry(source="features", path=str(p)), None, cache_dir=tmp_path, progress=False)
    assert f.x_train.dtype == np.float32 and f.x_train.shape == (20, 4) and f.dataset == "f"
    bad = tmp_path / "nan.npz"
    xt = rng.normal(size=(20, 4))
    xt[3, 1] = np.nan
    np.savez(bad, x_train=xt, y_train=np.arange(20) % 2, x_test=rng.normal(size=(6, 4)), y_test=np.arange(6) % 2)
    with pytest.raises(FeatureError, match="NaN"):
        load_features_npz(entry(source="features", path=str(bad)))
    obj = tmp_path / "obj.npz"
    np.savez(obj, x_train=np.array([{"a": 1}], dtype=object), y_train=[0], x_test=[[0.0]], y_test=[0])
    with pytest.raises(FeatureError, match="obj.npz"):
        load_features_npz(entry(source="features", path=str(obj)))
    missing = tmp_path / "m.npz"
    np.savez(missing, x_train=rng.normal(size=(3, 2)))
    with pytest.raises(FeatureError, match="y_train"):
        load_features_npz(entry(source="features", path=str(missing)))


def test_torch_hub_needs_trust_repo():
    from riskdecomp.utils.errors import ZooError

    with pytest.raises(ZooError, match="trust_repo"):
        entry(source="torch_hub", repo="facebookresearch/dino:main", entrypoint="dino_resnet50")
    e = entry(source="torch_hub", repo="facebookresearch/dino:main", entrypoint="dino_resnet50", trust_repo=True)
    assert e.trust_repo is True


def test_a_fully_cached_rerun_builds_no_model(tiny, r18_weights, tmp_path, monkeypatch):
    import riskdecomp.features.cache as F

    e = entry(source="checkpoint", architecture="resnet18", weights=str(r18_weights / "r18.safetensors"))
    first = featurize(e, tiny, cache_dir=tmp_path, progress=False)

    def boom(*a, **k):
        raise AssertionError("the encoder was built although every split is cached")

    monkeypatch.setattr(F, "build_encoder", boom)
    again = featurize(e, tiny, cache_dir=tmp_path, progress=False)
    assert again.forward_passes == 0 and np.array_equal(again.x_test, first.x_test)
