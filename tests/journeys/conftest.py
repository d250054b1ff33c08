"""Fixtures of the journey suite: real JPEG folders cut from ../shared, weights files the tests write, and a
``riskdecomp`` runner that records each journey's wall time (printed at the end of the session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

COMPONENTS = ["approx", "usability", "probe_gen", "enc_gen", "agg_risk"]
TIMM_MODELS = {"vit_t": "test_vit", "resnet_t": "test_resnet", "convnext_t": "test_convnext"}
WALL_TIMES: list[tuple[str, float]] = []


# ------------------------------------------------------------------------------------------------ running the CLI
def _command() -> list[str]:
    """The installed ``riskdecomp`` script of this interpreter's environment (what a user types), else the module."""
    script = Path(sys.executable).parent / "riskdecomp"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from riskdecomp.cli import main; sys.exit(main())"]


class Run:
    def __init__(self, args, rc, output, seconds):
        self.args, self.rc, self.output, self.seconds = args, rc, output, seconds

    def __repr__(self):
        return f"riskdecomp {' '.join(self.args)} -> exit {self.rc} in {self.seconds:.0f}s\n{self.output[-4000:]}"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One feature/checkpoint cache for the whole suite (as a user's ~/.cache): journeys on the same images and
    encoders featurize once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def riskdecomp(cache_dir):
    """``riskdecomp(*args, label=...)`` runs the CLI in a subprocess with default flags plus ``args``; the wall time
    is recorded under ``label`` for the session summary."""
    env = {**os.environ, "RISKDECOMP_CACHE": str(cache_dir)}
    env.pop("RISKDECOMP_LOG_LEVEL", None)

    def run(*args, label: str, timeout: int = 900) -> Run:
        args = [str(a) for a in args]
        t = time.perf_counter()
        p = subprocess.run(_command() + args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
        seconds = time.perf_counter() - t
        WALL_TIMES.append((label, seconds))
        return Run(args, p.returncode, p.stdout, seconds)

    return run


def pytest_terminal_summary(terminalreporter):
    if WALL_TIMES:
        terminalreporter.section("journey wall times")
        for label, seconds in WALL_TIMES:
            terminalreporter.write_line(f"{seconds:7.1f} s  {label}")


# ------------------------------------------------------------------------------------------------ data
def extract_imagefolder(archives: dict, dest: Path, per_class: dict, suffix: str) -> Path:
    """``dest/train|test/<class>/*``: the first ``per_class[split]`` images of each class in archive order (the
    archives are sorted by name), read in one streaming pass."""
    for split, archive in archives.items():
        taken: dict = {}
        with tarfile.open(archive, "r:gz") as tar:
            for m in tar:
                parts = Path(m.name).parts
                if not m.isfile() or len(parts) != 3 or not m.name.endswith(suffix):
                    continue
                if taken.setdefault(parts[1], 0) >= per_class[split]:
                    continue
                taken[parts[1]] += 1
                out = dest / ("train" if split == "train" else "test") / parts[1]
                out.mkdir(parents=True, exist_ok=True)
                (out / parts[2]).write_bytes(tar.extractfile(m).read())
    return dest


@pytest.fixture(scope="session")
def cifar(shared_dir, tmp_path_factory) -> Path:
    """An imagefolder of real CIFAR-10 JPEGs: 12 train and 4 test images per class (120 / 40)."""
    src = shared_dir / "data" / "cifar10-jpg"
    return extract_imagefolder({"train": src / "cifar10_train_jpg.tar.gz", "test": src / "cifar10_test_jpg.tar.gz"},
                               tmp_path_factory.mktemp("data") / "cifar", {"train": 12, "test": 4}, ".jpg")


@pytest.fixture(scope="session")
def imagenette(shared_dir, tmp_path_factory) -> Path:
    """An imagefolder of real 224x224 Imagenette JPEGs: 10 train and 4 val images per class."""
    src = shared_dir / "data" / "imagenette2-224-subset"
    return extract_imagefolder({"train": src / "imagenette2_224_train400.tar.gz",
                                "val": src / "imagenette2_224_val.tar.gz"},
                               tmp_path_factory.mktemp("data") / "imagenette", {"train": 10, "val": 4}, ".JPEG")


def save_timm_weights(arch: str, path: Path, seed: int = 0) -> Path:
    """What a user downloads as ``model.safetensors``: a (freshly initialised) timm model's full state dict."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="session")
def weights(tmp_path_factory) -> dict:
    """safetensors files for the timm test models and a riskdecomp smallcnn checkpoint."""
    import torch
    from safetensors.torch import save_file

    from riskdecomp.pretrain.backbones import create_backbone

    root = tmp_path_factory.mktemp("weights")
    out = {name: save_timm_weights(arch, root / f"{name}.safetensors") for name, arch in TIMM_MODELS.items()}
    torch.manual_seed(0)
    save_file(create_backbone("smallcnn").state_dict(), str(root / "mine.safetensors"))
    out["mine"] = root / "mine.safetensors"
    return out


def write_zoo(path: Path, *blocks: str) -> Path:
    """A zoo file whose ``models:`` list is the concatenation of the YAML list ``blocks`` (each dedented)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(textwrap.dedent(b).strip() + "\n" for b in blocks)
    path.write_text("models:\n" + textwrap.indent(body, "  "))
    return path


def timm_entries(weights: dict, names=tuple(TIMM_MODELS)) -> str:
    return "".join(f"- {{name: {n}, source: timm, model: {TIMM_MODELS[n]}, weights: {weights[n]}, "
                   f"metadata: {{objective: init, architecture: {TIMM_MODELS[n]}}}}}\n" for n in names)


def pixel_features(folder: Path, npz: Path) -> Path:
    """A ``features`` entry's .npz: 8x8 grey pixels of the folder's images, in the order riskdecomp lists them."""
    from riskdecomp.features.datasets import load_imagefolder

    ds = load_imagefolder(folder)
    arrays = {}
    for split in ("train", "test"):
        s = getattr(ds, split)
        x = np.stack([np.asarray(s.load_image(i).convert("L").resize((8, 8)), dtype=np.float32).ravel() / 255
                      for i in range(len(s))])
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, np.asarray(s.labels)
    np.savez(npz, **arrays)
    return npz


# ------------------------------------------------------------------------------------------------ journey checks
def report_notes(html: Path) -> list[str]:
    import re

    return re.findall(r"<li class='note'>([^<]*)</li>", html.read_text())


def assert_journey_ok(run: Run, out: Path, models, *, justified_notes=()) -> pd.DataFrame:
    """Exit 0, no traceback, one complete leaderboard row per model, no failures.csv, and a report that drew every
    figure its data supports (only the ``justified_notes`` prefixes may appear as 'Not drawn')."""
    assert run.rc == 0, run
    assert "Traceback" not in run.output, run
    assert not (out / "failures.csv").exists(), (out / "failures.csv").read_text()
    lb = pd.read_csv(out / "leaderboard.csv")
    assert sorted(lb["model"]) == sorted(models), lb["model"].tolist()
    for _, row in lb.iterrows():
        for c in COMPONENTS:  # approx is NaN only when merged into usability (no reference)
            assert np.isfinite(row[c]) or (c == "approx" and bool(row.get("approx_merged"))), (row["model"], c)
        assert abs(row[COMPONENTS[:4]].fillna(0).sum() - row["agg_risk"]) < 1e-6
    html = out / "report.html"
    assert html.is_file(), run
    unjustified = [n for n in report_notes(html) if not n.startswith(tuple(justified_notes))]
    assert unjustified == [], unjustified
    return lb


def copy_results(out: Path, dest: Path) -> Path:
    return Path(shutil.copytree(out, dest))


# ------------------------------------------------------------------------------------------------ the main journey
MIXED_MODELS = [*TIMM_MODELS, "mine", "pixels", "simclr"]


@pytest.fixture(scope="session")
def mixed_zoo(cifar, weights, tmp_path_factory) -> Path:
    """Every kind of entry in one zoo: three timm architectures with weights files, a checkpoint, precomputed
    features and a recipe riskdecomp pretrains (1 epoch)."""
    root = tmp_path_factory.mktemp("mixed")
    pixel_features(cifar, root / "pixels.npz")
    return write_zoo(root / "zoo.yaml", timm_entries(weights), f"""
        - {{name: mine, source: checkpoint, architecture: smallcnn, weights: {weights['mine']},
           metadata: {{objective: init, architecture: smallcnn}}}}
        - {{name: pixels, source: features, path: pixels.npz, dataset: cifar,
           metadata: {{objective: none, architecture: pixels}}}}
        - {{name: simclr, source: recipe, recipe: {{objective: simclr, backbone: smallcnn, epochs: 1, batch_size: 32}},
           metadata: {{objective: simclr, architecture: smallcnn}}}}
        """)


@pytest.fixture(scope="session")
def mixed_run(riskdecomp, mixed_zoo, cifar, tmp_path_factory):
    """``riskdecomp evaluate --zoo Z --dataset imagefolder:cifar --out OUT``: default flags (``--jobs auto``)."""
    out = tmp_path_factory.mktemp("mixed-out") / "results"
    run = riskdecomp("evaluate", "--zoo", mixed_zoo, "--dataset", f"imagefolder:{cifar}", "--out", out,
                     label="evaluate: 3 timm + checkpoint + features + recipe on 120/40 CIFAR JPEGs, --jobs auto")
    return run, out


# 'Not drawn' notes that a 2-model zoo justifies: effects of design choices with confounder controls need more models,
# a ranking needs 5 (issue 21), a scaling law fitted to 2 models is drawn only when its R² reaches 0.5
FEW_MODELS = ("design effects: nothing estimable", "ranking change: not shown:", "scaling law: not shown:")
