"""Bad input, table-driven: every case gives a one-line error naming the culprit, no traceback, a non-zero exit,
and nothing written outside the output and cache folders. Recoverable cases (a damaged cache) just recompute."""

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from test_datasets import make_folder

from riskdecomp.cli import main

FAST = ["--n-boot", "20", "--fewshot-seeds", "1", "--shots", "1", "--fractions", "0.5", "--no-active",
        "--no-uncertainty", "--no-statistics", "--no-report", "--no-progress"]


class Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/riskdecomp_pwned",))


def npz(path, x_tr=None, y_tr=None, x_te=None, y_te=None, **over):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.normal(size=(40, 3)) if x_tr is None else x_tr,
                  y_train=np.arange(40) % 2 if y_tr is None else y_tr,
                  x_test=rng.normal(size=(10, 3)) if x_te is None else x_te,
                  y_test=np.arange(10) % 2 if y_te is None else y_te)
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def feat_zoo(path="f.npz", name="m"):
    return f"models:\n  - name: {name}\n    source: features\n    path: {path}\n"


def setup_case(case, root: Path):
    """Create the files of one case under root; return (argv, zoo text or None)."""
    imgs = root / "imgs"
    if case in ("corrupt_image", "truncated_image", "test_class_absent_images", "empty_dataset"):
        make_folder(imgs, n_train=2, n_test=1, size=8)
    if case == "corrupt_image":
        (imgs / "train" / "cat" / "bad.png").write_bytes(b"garbage, not an image")
    if case == "truncated_image":
        good = imgs / "train" / "dog" / "0.png"
        Image.fromarray(np.full((64, 64, 3), 7, np.uint8)).save(imgs / "train" / "dog" / "cut.jpg")
        data = (imgs / "train" / "dog" / "cut.jpg").read_bytes()
        (imgs / "train" / "dog" / "cut.jpg").write_bytes(data[: len(data) // 3])
        assert good.exists()
    if case == "test_class_absent_images":
        (imgs / "test" / "bird").mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(imgs / "test" / "bird" / "0.png")
    if case == "empty_dataset":
        for p in imgs.rglob("*.png"):
            p.unlink()
    if case in ("wrong_arch", "pickled_code", "missing_weights"):
        torch.manual_seed(0)
        save_file(timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict(), str(root / "r18.safetensors"))
        torch.save({"w": Evil()}, root / "evil.pt")
    if case == "nan_features":
        x = np.random.default_rng(1).normal(size=(40, 3))
        x[5, 0] = np.nan
        npz(root / "f.npz", x_tr=x)
    if case == "inf_features":
        x = np.random.default_rng(1).normal(size=(10, 3))
        x[2, 2] = np.inf
        npz(root / "f.npz", x_te=x)
    if case == "test_class_absent_features":
        npz(root / "f.npz", y_te=np.arange(10) % 3)
    if case == "missing_array":
        npz(root / "f.npz", y_test=None)
        np.savez(root / "f.npz", x_train=np.zeros((4, 2)), y_train=np.arange(4) % 2, x_test=np.zeros((2, 2)))
    if case == "not_npz":
        (root / "f.npz").write_bytes(b"this is not a zip archive")
    if case == "object_npz":
        np.savez(root / "f.npz", x_train=np.array([Evil()], dtype=object), y_train=[0], x_test=[[0.0]], y_test=[0])
    if case == "wrong_shapes":
        npz(root / "f.npz", y_tr=np.arange(39) % 2)

    image_zoo = ("models:\n  - name: r\n    source: checkpoint\n    architecture: smallcnn\n"
                 "    weights: w.safetensors\n    model_kwargs: {width: 2, z_dim: 4}\n")
    zoos = {
        "malformed_yaml": "models: [\n  - name: a\n",
        "missing_field": "models:\n  - name: a\n    source: timm\n",
        "wrong_type": "models:\n  - name: a\n    source: timm\n    model: 12\n",
        "unknown_source": "models:\n  - name: a\n    source: onnx\n    model: x\n",
        "extra_field": "models:\n  - name: a\n    source: timm\n    model: resnet18\n    pretrained: false\n    colour: red\n",
        "unknown_representation": "models:\n  - name: a\n    source: timm\n    model: resnet18\n    representation: mean\n",
        "duplicate_name": "models:\n  - {name: a, source: timm, model: resnet18, pretrained: false}\n  - {name: a, source: timm, model: resnet34, pretrained: false}\n",
        "escaping_name": "models:\n  - name: ../escape\n    source: timm\n    model: resnet18\n",
        "absolute_name": "models:\n  - name: /etc/passwd\n    source: timm\n    model: resnet18\n",
        "untrusted_hub": "models:\n  - name: h\n    source: torch_hub\n    repo: someone/repo\n    entrypoint: e\n",
        "unknown_timm_model": "models:\n  - name: a\n    source: timm\n    model: resnet_nonexistent_999\n    pretrained: false\n",
        "missing_weights": "models:\n  - name: a\n    source: timm\n    model: resnet18\n    weights: nothere.safetensors\n",
        "wrong_arch": "models:\n  - name: a\n    source: checkpoint\n    architecture: resnet34\n    weights: r18.safetensors\n",
        "pickled_code": "models:\n  - name: a\n    source: checkpoint\n    architecture: resnet18\n    weights: evil.pt\n",
        "unknown_model": feat_zoo(),
        "unknown_dataset": feat_zoo().replace("features\n    path: f.npz", "timm\n    model: resnet18\n    pretrained: false"),
        "corrupt_image": image_zoo, "truncated_image": image_zoo, "test_class_absent_images": image_zoo,
        "empty_dataset": image_zoo,
    }
    zoo = zoos.get(case, feat_zoo())
    if case in ("unknown_model",):
        npz(root / "f.npz")
    if zoo == image_zoo:
        from riskdecomp.pretrain.backbones import create_backbone

        save_file(create_backbone("smallcnn", width=2, z_dim=4).state_dict(), str(root / "w.safetensors"))
    (root / "zoo.yaml").write_text(zoo)
    argv = ["evaluate", "--zoo", str(root / "zoo.yaml"), "--out", str(root / "out"), "--cache-dir",
            str(root / "cache"), *FAST]
    if case == "unknown_model":
        argv += ["--models", "ghost"]
    if case == "unknown_dataset":
        argv += ["--dataset", "imagenet-on-mars"]
    if zoo == image_zoo:
        argv += ["--dataset", f"imagefolder:{imgs}"]
    return argv


# case -> words the one-line error must contain
CASES = {
    "malformed_yaml": ["zoo.yaml", "malformed YAML"],
    "missing_field": ["zoo.yaml", "'a'", "'model'"],
    "wrong_type": ["'a'", "'model'"],
    "unknown_source": ["'a'", "unknown source 'onnx'"],
    "extra_field": ["'a'", "'colour'"],
    "unknown_representation": ["'a'", "representation", "'mean'"],
    "duplicate_name": ["duplicate name 'a'"],
    "escaping_name": ["'../escape'", "'name'"],
    "absolute_name": ["'/etc/passwd'", "'name'"],
    "untrusted_hub": ["'h'", "trust_repo"],
    "unknown_model": ["unknown model 'ghost'"],
    "unknown_dataset": ["unknown dataset 'imagenet-on-mars'"],
    "unknown_timm_model": ["'a'", "resnet_nonexistent_999"],
    "missing_weights": ["'a'", "nothere.safetensors", "not found"],
    "wrong_arch": ["'a'", "r18.safetensors", "resnet34"],
    "pickled_code": ["'a'", "evil.pt", "refusing"],
    "corrupt_image": ["bad.png"],
    "truncated_image": ["cut.jpg"],
    "test_class_absent_images": ["bird", "absent from the train split"],
    "empty_dataset": ["no images"],
    "nan_features": ["'m'", "NaN"],
    "inf_features": ["'m'", "inf"],
    "test_class_absent_features": ["'m'", "absent"],
    "missing_array": ["'m'", "y_test"],
    "not_npz": ["'m'", "f.npz"],
    "object_npz": ["'m'", "f.npz"],
    "wrong_shapes": ["'m'", "y_train"],
}


def tree(root: Path, exclude=("out", "cache")) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.relative_to(root).parts[0] not in exclude}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_one_line_error(case, tmp_path, capsys):
    argv = setup_case(case, tmp_path)
    before = tree(tmp_path)
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code in (1, 2), (code, err)
    assert "Traceback" not in err
    assert lines and all(line.startswith("riskdecomp:") for line in lines), err
    first = lines[0]
    for needle in CASES[case]:
        assert needle in first, (needle, first)
    assert tree(tmp_path) == before  # nothing outside out/ and cache/ was written or touched
    assert not Path("/tmp/riskdecomp_pwned").exists()


def test_truncated_and_tampered_cache_are_recomputed(tmp_path, capsys):
    setup_case("corrupt_image", tmp_path)
    make_folder(tmp_path / "imgs", n_train=10, n_test=5, size=8)  # enough images for every estimator
    (tmp_path / "imgs" / "train" / "cat" / "bad.png").unlink()
    argv = ["evaluate", "--zoo", str(tmp_path / "zoo.yaml"), "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), "--dataset", f"imagefolder:{tmp_path / 'imgs'}", *FAST, "--shots", "1"]
    main(argv)
    board = (tmp_path / "out" / "leaderboard.csv").read_bytes()
    files = sorted((tmp_path / "cache" / "features").rglob("*.npy"))
    assert len(files) == 2
    data = files[0].read_bytes()
    files[0].write_bytes(data[:-8])  # truncated
    tampered = bytearray(files[1].read_bytes())
    tampered[-1] ^= 0x55
    files[1].write_bytes(bytes(tampered))
    main(argv + ["--force"])
    assert (tmp_path / "out" / "leaderboard.csv").read_bytes() == board


def test_class_with_fewer_examples_than_k_skips_that_setting_with_one_line(tmp_path, caplog):
    """A class with fewer train examples than a few-shot k is not fatal: that setting is skipped (NaN + reason in
    the leaderboard), the other settings and the decomposition are complete, and one warning line names the model,
    the setting and the class."""
    import logging

    import pandas as pd

    rng = np.random.default_rng(0)
    y_tr = np.r_[np.repeat([0, 1, 2], 40), np.full(6, 3)]  # class 3: 6 train examples
    y_te = np.repeat([0, 1, 2, 3], 10)
    means = rng.normal(size=(4, 8)) * 3
    np.savez(tmp_path / "f.npz", x_train=(means[y_tr] + rng.normal(size=(len(y_tr), 8))).astype(np.float32),
             y_train=y_tr, x_test=(means[y_te] + rng.normal(size=(len(y_te), 8))).astype(np.float32), y_test=y_te)
    (tmp_path / "zoo.yaml").write_text("models:\n  - {name: feat, source: features, path: f.npz}\n")
    argv = ["evaluate", "--zoo", str(tmp_path / "zoo.yaml"), "--out", str(tmp_path / "out"), "--cache-dir",
            str(tmp_path / "cache"), *FAST, "--shots", "1,10", "--fractions", "0.1"]
    with caplog.at_level(logging.WARNING, logger="riskdecomp"):
        main(argv)
    board = pd.read_csv(tmp_path / "out" / "leaderboard.csv")
    assert np.isfinite(board.loc[0, "fewshot_1shot"]) and np.isfinite(board.loc[0, "agg_risk"])
    assert np.isnan(board.loc[0, "fewshot_10shot"])
    assert board.loc[0, "fewshot_10shot_skipped"].startswith("class 3 has 6 train examples")
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert lines == ["model 'feat': fewshot_10shot skipped: class 3 has 6 train examples, need 10 labeled + 1 "
                     "validation"]
