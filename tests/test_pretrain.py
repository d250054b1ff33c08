"""Objectives (known-answer loss cases), the training loop, checkpoints and the recipe cache."""

import json
import math
import tarfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from riskdecomp.features.datasets import load_dataset
from riskdecomp.pretrain import (
    Recipe,
    eval_transform,
    load_checkpoint,
    pretrain,
    pretrained_checkpoint,
    save_checkpoint,
)
from riskdecomp.pretrain import checkpoint as ckpt_mod
from riskdecomp.pretrain import objectives as O
from riskdecomp.pretrain.augment import to_float
from riskdecomp.pretrain.backbones import create_backbone
from riskdecomp.pretrain.train import normalize
from riskdecomp.utils.errors import WeightsError

TINY = dict(width=4, z_dim=8, epochs=2, batch_size=64, image_size=16,
            head={"kind": "mlp", "depth": 2, "width": 16, "out_dim": 8})


@torch.no_grad()
def embed(enc, images: torch.Tensor) -> np.ndarray:
    """The encoder's eval-mode representation of a uint8 image tensor (as training normalizes its inputs)."""
    return enc.eval()(normalize(to_float(images))).numpy()


# ------------------------------------------------------------------------------------------ losses


def _naive_nt_xent(views, tau):
    u = F.normalize(torch.cat(views), dim=1)
    n, v = views[0].shape[0], len(views)
    total, count = 0.0, 0
    for i in range(v * n):
        denom = sum(math.exp(float(u[i] @ u[k]) / tau) for k in range(v * n) if k != i)
        for p in range(v * n):
            if p != i and p % n == i % n:
                total += -(float(u[i] @ u[p]) / tau - math.log(denom)) / (v - 1)
        count += 1
    return total / count


def test_nt_xent_matches_hand_loop_for_2_and_3_views():
    g = torch.Generator().manual_seed(0)
    for v in (2, 3):
        views = [torch.randn(4, 5, generator=g) for _ in range(v)]
        assert O.nt_xent(views, 0.5).item() == pytest.approx(_naive_nt_xent(views, 0.5), rel=1e-5)


def test_nt_xent_two_orthogonal_pairs_known_answer():
    # identical views of 2 orthogonal samples: s_pos = 1/tau, the 2 negatives have s = 0
    e = torch.eye(2)
    tau = 0.5
    expected = -(2.0 - math.log(math.exp(2.0) + 2.0))
    assert O.nt_xent([e, e.clone()], tau).item() == pytest.approx(expected, rel=1e-6)
    rnd = [torch.randn(64, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    same = rnd[0]
    assert O.nt_xent([same, same.clone()], 0.2) < O.nt_xent(rnd, 0.2) - 1.0


def test_byol_and_simsiam_losses():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[3.0, 0.0], [1.0, 0.0]])  # cos = 1, 0
    assert O.normalized_mse(p, z).item() == pytest.approx((0 + 2) / 2)
    assert O.negative_cosine(p, z).item() == pytest.approx(-0.5)
    z.requires_grad_(True)
    p = p.clone().requires_grad_(True)
    O.negative_cosine(p, z).backward()
    assert z.grad is None and p.grad is not None  # stop-gradient on the target


def test_vicreg_terms():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 4, generator=g) * 3.0  # every std ~ 3 >= 1
    t = O.vicreg_terms(z, z.clone())
    assert t["invariance"].item() == 0.0 and t["variance"].item() == 0.0
    # collapsed embeddings: std 0 -> variance term = relu(1 - sqrt(eps)) per branch half
    c = torch.zeros(10, 3)
    assert O.vicreg_terms(c, c)["variance"].item() == pytest.approx(1 - math.sqrt(1e-4), rel=1e-6)
    # covariance term vs numpy
    x = torch.randn(50, 3, generator=g)
    y = torch.randn(50, 3, generator=g)
    cov = sum((np.cov(a.numpy(), rowvar=False) ** 2).sum() - (np.diag(np.cov(a.numpy(), rowvar=False)) ** 2).sum()
              for a in (x, y)) / 3
    assert O.vicreg_terms(x, y)["covariance"].item() == pytest.approx(cov, rel=1e-4)
    total = O.vicreg_loss(x, y)
    tt = O.vicreg_terms(x, y)
    assert total.item() == pytest.approx(25 * tt["invariance"].item() + 25 * tt["variance"].item() + tt["covariance"].item(), rel=1e-5)


def test_barlow_twins_zero_at_identity_cross_correlation():
    # standardized, mutually decorrelated columns (orthogonal +-1 Hadamard columns): C = I -> loss 0
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32)
    z = h[:, 1:]  # 3 zero-mean, unit-variance, orthogonal columns
    assert O.barlow_twins_loss(z, z.clone(), lambd=0.5).item() == pytest.approx(0.0, abs=1e-6)
    # anti-correlated views: C = -I -> sum (1 - (-1))^2 = 4 * D
    assert O.barlow_twins_loss(z, -z, lambd=0.5).item() == pytest.approx(12.0, rel=1e-4)
    # default lambda = 1/D: a fully correlated pair of columns adds lambda * 2 off-diagonal ones
    zz = torch.stack([z[:, 0], z[:, 0]], 1)
    assert O.barlow_twins_loss(zz, zz).item() == pytest.approx(0.5 * 2, rel=1e-4)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(q, p).sum(-1)
    torch.testing.assert_close(O.kl_standard_normal(mu, logvar), expected)
    assert O.kl_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0


def test_heads():
    from riskdecomp.pretrain.recipe import HeadConfig

    h, d = O.build_head(HeadConfig(kind="none"), 5)
    assert d == 5 and isinstance(h, torch.nn.Identity)
    h, d = O.build_head(HeadConfig(kind="mlp", depth=3, width=7, out_dim=4), 5)
    assert d == 4 and sum(isinstance(m, torch.nn.Linear) for m in h) == 3


# ------------------------------------------------------------------------------------------ training


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    """The digits dataset cut to 240 train / 60 test images (fast)."""
    from riskdecomp.features.datasets import ArraySplit

    full = load_dataset("digits")
    tr, te = full.train, full.test
    full.train = ArraySplit("digits", "train", full.classes, tr.images[:240], tr.labels[:240])
    full.test = ArraySplit("digits", "test", full.classes, te.images[:60], te.labels[:60])
    full.fingerprint = full.fingerprint + "-sub300"
    return full


def _init_state(recipe):
    from riskdecomp.pretrain.backbones import build_recipe_encoder

    torch.manual_seed(recipe.seed)
    return build_recipe_encoder(recipe).state_dict()


@pytest.mark.parametrize("objective", ["simclr", "byol", "simsiam", "vicreg", "barlow_twins", "stochastic",
                                       "supervised"])
def test_every_objective_trains_one_epoch(digits, objective):
    r = Recipe(objective=objective, **{**TINY, "epochs": 1, "batch_size": 120})
    sub = digits.train
    enc, hist = pretrain(r, sub, progress=False)
    assert list(hist.epoch) == [0] and np.isfinite(hist.loss).all()
    assert any(not torch.equal(p, q) for p, q in zip(enc.state_dict().values(), _init_state(r).values()))
    z = embed(enc, sub.to_uint8(16)[:10])
    assert z.shape == (10, 8) and np.isfinite(z).all()


def test_pretrain_is_deterministic_and_seeded(digits):
    r = Recipe(objective="simclr", **TINY)
    a, ha = pretrain(r, digits.train, progress=False)
    b, hb = pretrain(r, digits.train, progress=False)
    for (k, v), (k2, v2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert ha.loss.tolist() == hb.loss.tolist()
    c, _ = pretrain(r.model_copy(update={"seed": 1}), digits.train, progress=False)
    assert not torch.equal(a.backbone.fc.weight, c.backbone.fc.weight)


@pytest.mark.parametrize("objective", ["simclr", "supervised"])
def test_checkpoint_is_bit_identical_whatever_the_thread_count(tmp_path, digits, objective):
    """Issue 12 #4 (zoo item 2): the same recipe pretrained with 1 and with 2 torch threads (what --jobs/--threads
    change) gives byte-identical safetensors files; the caller's thread count is restored afterwards."""
    import hashlib

    r = Recipe(objective=objective, **{**TINY, "epochs": 2, "batch_size": 60})
    digests = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        path = pretrained_checkpoint(r, digits, tmp_path / f"t{threads}", progress=False)
        assert torch.get_num_threads() == threads
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    assert digests[0] == digests[1]


def test_byol_target_is_ema_of_online(digits):
    from riskdecomp.pretrain.backbones import build_recipe_encoder

    r = Recipe(objective="byol", ema=0.5, **TINY)
    torch.manual_seed(0)
    enc = build_recipe_encoder(r)
    obj = O.build_objective(r, enc)
    before = obj.target_encoder.backbone.fc.weight.clone()
    with torch.no_grad():
        enc.backbone.fc.weight.add_(1.0)
    obj.after_step(enc)
    torch.testing.assert_close(obj.target_encoder.backbone.fc.weight, before + 0.5)
    assert not any(p.requires_grad for p in obj.target_encoder.parameters())


def test_init_trains_nothing(digits):
    r = Recipe(objective="init", **TINY)
    enc, hist = pretrain(r, digits.train, progress=False)
    assert len(hist) == 0
    torch.manual_seed(r.seed)
    fresh = create_backbone("smallcnn", width=4, z_dim=8)
    for k, v in fresh.state_dict().items():
        assert torch.equal(enc.backbone.state_dict()[k], v)


# ------------------------------------------------------------------------------------------ checkpoints


def test_checkpoint_roundtrip(tmp_path, digits):
    r = Recipe(objective="stochastic", **{**TINY, "epochs": 1})
    enc, hist = pretrain(r, digits.train, progress=False)
    path = save_checkpoint(tmp_path / "enc.safetensors", enc, r, hist)
    side = json.loads((tmp_path / "enc.safetensors.json").read_text())
    assert Recipe.model_validate(side["recipe"]) == r and side["recipe_key"] == r.key()
    assert len(side["history"]) == 1 and side["normalization"]["mean"] == [0.5, 0.5, 0.5]
    enc2, r2 = load_checkpoint(path)
    assert r2 == r
    x = digits.test.to_uint8(16)[:20]
    np.testing.assert_array_equal(embed(enc, x), embed(enc2, x))
    torch.testing.assert_close(enc.posterior(torch.zeros(2, 3, 16, 16)), enc2.posterior(torch.zeros(2, 3, 16, 16)))
    with torch.no_grad():
        mu, logvar = (t.numpy() for t in enc2.eval().posterior(normalize(to_float(x))))
    np.testing.assert_allclose(mu, embed(enc, x), rtol=1e-6)
    assert logvar.shape == mu.shape and np.isfinite(logvar).all()
    # the bare backbone loads strictly from the sidecar's architecture + model_kwargs (source: checkpoint)
    from safetensors.torch import load_file

    bb = create_backbone(side["architecture"], **side["model_kwargs"])
    bb.load_state_dict(load_file(str(path)), strict=True)
    # the eval transform reproduces what the encoder saw: resize to image_size, scale, normalize
    t = eval_transform(r, native_size=32)
    img = digits.test.load_image(0)
    xt = t(img)
    assert xt.shape == (3, 16, 16) and -1 <= xt.min() and xt.max() <= 1
    assert torch.allclose(eval_transform(path)(img), xt)
    assert eval_transform(None, 32)(img).shape == (3, 32, 32)
    assert not list(tmp_path.glob("*.tmp"))


def test_checkpoint_errors(tmp_path, digits):
    with pytest.raises(WeightsError, match="not found"):
        load_checkpoint(tmp_path / "missing.safetensors")
    r = Recipe(objective="init", **TINY)
    enc, _ = pretrain(r, digits.train, progress=False)
    path = save_checkpoint(tmp_path / "a.safetensors", enc, r)
    side = json.loads((tmp_path / "a.safetensors.json").read_text())
    side["recipe"]["width"] = 8  # weights no longer fit
    (tmp_path / "a.safetensors.json").write_text(json.dumps(side))
    with pytest.raises(WeightsError, match="do not fit"):
        load_checkpoint(path)
    path.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="a.safetensors"):
        load_checkpoint(path)


def test_pretrained_checkpoint_cache_trains_once(tmp_path, digits, monkeypatch):
    calls = _counting_pretrain(monkeypatch)
    r = Recipe(objective="simclr", **{**TINY, "epochs": 1})
    p1 = pretrained_checkpoint(r, digits, tmp_path, progress=False)
    assert p1 == tmp_path / "recipes" / f"{r.key()}-{digits.fingerprint}.safetensors"
    mtime = p1.stat().st_mtime_ns
    p2 = pretrained_checkpoint(r, digits, tmp_path, progress=False)
    assert p2 == p1 and len(calls) == 1 and p1.stat().st_mtime_ns == mtime
    # an invalid cached file (sidecar lost) is retrained
    ckpt_mod.sidecar_path(p1).unlink()
    pretrained_checkpoint(r, digits, tmp_path, progress=False)
    assert len(calls) == 2 and ckpt_mod.sidecar_path(p1).is_file()


def test_pretrain_to_file(tmp_path):
    r = Recipe(objective="init", **TINY)
    out = ckpt_mod.pretrain_to_file(r, "digits", tmp_path / "x.safetensors", progress=False)
    enc, r2 = load_checkpoint(out)
    assert r2 == r


# ------------------------------------------------------------------------------------------ real images


def _extract(tar_path, dest, per_class):
    counts = {}
    with tarfile.open(tar_path) as tf:
        for m in tf:
            if not m.isfile() or not m.name.lower().endswith((".jpg", ".jpeg", ".png")):
                continue
            cls = m.name.split("/")[-2]
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            (dest / cls).mkdir(parents=True, exist_ok=True)
            (dest / cls / m.name.split("/")[-1]).write_bytes(tf.extractfile(m).read())
            if len(counts) == 10 and all(v >= per_class for v in counts.values()):
                break
    return counts


def test_simclr_loss_decreases_on_real_cifar10_images(shared_dir, tmp_path):
    src = shared_dir / "data" / "cifar10-jpg"
    _extract(src / "cifar10_train_jpg.tar.gz", tmp_path / "train", 30)
    _extract(src / "cifar10_test_jpg.tar.gz", tmp_path / "test", 3)
    ds = load_dataset(f"imagefolder:{tmp_path}")
    assert len(ds.train) == 300 and len(ds.classes) == 10
    r = Recipe(objective="simclr", width=8, z_dim=16, epochs=6, batch_size=100, lr=3e-3, image_size=16,
               head={"kind": "mlp", "depth": 2, "width": 32, "out_dim": 16})
    enc, hist = pretrain(r, ds.train, progress=False)
    assert hist.loss.iloc[-1] < hist.loss.iloc[0] - 0.05
    assert embed(enc, ds.test.to_uint8(16)).shape == (len(ds.test), 16)


# ------------------------------------------------------------------------------------------ checksums and --force


def _counting_pretrain(monkeypatch):
    calls = []
    real = ckpt_mod.pretrain

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(ckpt_mod, "pretrain", counting)
    monkeypatch.setattr(ckpt_mod, "_RETRAINED", set())
    return calls


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_recipe_checkpoint_carries_a_checksum_and_a_swapped_one_is_retrained(tmp_path, digits, monkeypatch):
    """Issue 12 #5 (zoo item 3): the sidecar records the weights' SHA-256; a cached checkpoint whose weights were
    swapped (another recipe's file) or corrupted (one flipped byte) is detected and pretrained again."""
    calls = _counting_pretrain(monkeypatch)
    r = Recipe(objective="simclr", **{**TINY, "epochs": 1})
    other = Recipe(objective="simclr", **{**TINY, "epochs": 1, "seed": 1})
    path = pretrained_checkpoint(r, digits, tmp_path, progress=False)
    good = path.read_bytes()
    assert json.loads(ckpt_mod.sidecar_path(path).read_text())["sha256"] == _sha(path)
    swapped = pretrained_checkpoint(other, digits, tmp_path, progress=False).read_bytes()
    assert swapped != good and len(swapped) == len(good) and len(calls) == 2
    for bad in (swapped, good[:-5] + bytes([good[-5] ^ 0xFF]) + good[-4:]):
        path.write_bytes(bad)
        with pytest.raises(WeightsError, match="checksum"):
            load_checkpoint(path)
        assert pretrained_checkpoint(r, digits, tmp_path, progress=False) == path
        assert path.read_bytes() == good  # retrained (bit-identical: same seed, fixed threads)
    assert len(calls) == 4


def test_user_checkpoint_whose_sidecar_disagrees_is_an_error(tmp_path, digits):
    """Zoo item 3: a `source: checkpoint` file written by `riskdecomp pretrain` whose weights no longer match its
    sidecar's checksum is a one-line error naming the file (never silently used)."""
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.zoo import parse_zoo

    r = Recipe(objective="init", **TINY)
    a = ckpt_mod.pretrain_to_file(r, "digits", tmp_path / "a.safetensors", progress=False)
    b = ckpt_mod.pretrain_to_file(r.model_copy(update={"seed": 3}), "digits", tmp_path / "b.safetensors",
                                  progress=False)
    entry = parse_zoo({"models": [{"name": "mine", "source": "checkpoint", "architecture": "smallcnn",
                                   "weights": str(a)}]})["mine"]
    enc = build_encoder(entry, dataset=digits)
    assert enc.weights_sha256 == _sha(a) and enc.weights_sha256 in enc.identity
    a.write_bytes(b.read_bytes())
    with pytest.raises(WeightsError) as info:
        build_encoder(entry, dataset=digits)
    assert "checksum" in str(info.value) and str(a) in str(info.value) and "\n" not in str(info.value)


def test_recipe_identity_covers_the_checkpoint_weights(tmp_path, digits, monkeypatch):
    """Zoo item 3: entry_identity of a recipe entry (feature-cache key; the runner's run key) holds the SHA-256 of
    the checkpoint's weights, pretraining it first when it is not cached; build_encoder reports the same."""
    from riskdecomp.features.encoders import build_encoder, entry_identity
    from riskdecomp.zoo import parse_zoo

    calls = _counting_pretrain(monkeypatch)
    entry = parse_zoo({"models": [{"name": "s", "source": "recipe",
                                   "recipe": {"objective": "simclr", **TINY, "epochs": 1}}]})["s"]
    ident = entry_identity(entry, digits, cache_dir=tmp_path)
    path = ckpt_mod.checkpoint_path(entry.recipe, digits, tmp_path)
    assert len(calls) == 1 and path.is_file() and _sha(path) in ident
    enc = build_encoder(entry, dataset=digits, cache_dir=tmp_path)
    assert enc.identity == ident and enc.weights_sha256 == _sha(path) and len(calls) == 1


def test_force_pretrains_and_featurizes_again(tmp_path, digits, monkeypatch):
    """Issue 12 #5 (zoo item 4): force=True really recomputes: pretrained_checkpoint retrains (once per process,
    however many calls one job makes), featurize reads no cached features (forward passes > 0) and rewrites them."""
    from riskdecomp.features.cache import featurize
    from riskdecomp.features.encoders import build_encoder
    from riskdecomp.zoo import parse_zoo

    calls = _counting_pretrain(monkeypatch)
    entry = parse_zoo({"models": [{"name": "s", "source": "recipe",
                                   "recipe": {"objective": "simclr", **TINY, "epochs": 1}}]})["s"]
    f1 = featurize(entry, digits, cache_dir=tmp_path, device="cpu", progress=False)
    assert len(calls) == 1 and f1.forward_passes > 0
    f2 = featurize(entry, digits, cache_dir=tmp_path, device="cpu", progress=False)
    assert len(calls) == 1 and f2.forward_passes == 0
    cached = sorted((tmp_path / "features" / "s").glob("*.npy"))
    mtimes = [p.stat().st_mtime_ns for p in cached]
    f3 = featurize(entry, digits, cache_dir=tmp_path, device="cpu", progress=False, force=True)
    assert len(calls) == 2 and f3.forward_passes > 0
    assert [p.stat().st_mtime_ns for p in cached] != mtimes
    np.testing.assert_array_equal(f3.x_train, f1.x_train)  # deterministic pretraining: same checkpoint, features
    build_encoder(entry, dataset=digits, cache_dir=tmp_path, force=True)  # same process: not retrained again
    pretrained_checkpoint(entry.recipe, digits, tmp_path, progress=False, force=True)
    assert len(calls) == 2
