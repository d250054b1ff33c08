"""Small synthetic zoos for end-to-end tests (precomputed-feature entries: fast, no images needed)."""

import textwrap
from pathlib import Path

import numpy as np


def synthetic_features(rng, n_train, n_test, classes, d, signal, noise_dims=0):
    """Gaussian class clusters in ``d`` dims with separation ``signal`` (plus pure-noise dims)."""
    means = rng.normal(size=(classes, d)) * signal
    y_tr = np.arange(n_train) % classes
    y_te = np.arange(n_test) % classes
    x_tr = means[y_tr] + rng.normal(size=(n_train, d))
    x_te = means[y_te] + rng.normal(size=(n_test, d))
    if noise_dims:
        x_tr = np.hstack([x_tr, rng.normal(size=(n_train, noise_dims))])
        x_te = np.hstack([x_te, rng.normal(size=(n_test, noise_dims))])
    return x_tr.astype(np.float32), y_tr, x_te.astype(np.float32), y_te


def make_features_zoo(root: Path, n_train=240, n_test=80, classes=4, d=8, extra_models=()) -> Path:
    """A zoo of 3 feature entries on one synthetic dataset: a supervised reference and two SSL-like encoders."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    specs = {"sup": (2.0, 0), "good": (1.2, 4), "weak": (0.5, 8)}
    base = None
    for name, (signal, noise) in specs.items():
        x_tr, y_tr, x_te, y_te = synthetic_features(rng, n_train, n_test, classes, d, signal, noise)
        np.savez(root / f"{name}.npz", x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
        base = base or (y_tr, y_te)
    text = textwrap.dedent("""
        defaults:
          dataset: synth
          metadata: {pretraining_data: synth, year: 2026}
        models:
          - name: sup
            source: features
            path: sup.npz
            metadata: {objective: supervised, ssl_mode: supervised, architecture: mlp, family: mlp, z_dim: 8}
          - name: good
            source: features
            path: good.npz
            reference: sup
            metadata: {objective: simclr, ssl_mode: contrastive, architecture: mlp, family: mlp, z_dim: 12}
          - name: weak
            source: features
            path: weak.npz
            reference: sup
            metadata: {objective: vicreg, ssl_mode: siamese, architecture: mlp, family: mlp, z_dim: 16}
    """)
    for extra in extra_models:
        text += textwrap.indent(textwrap.dedent(extra), "  ")
    path = root / "zoo.yaml"
    path.write_text(text)
    return path


FAST = ["--n-boot", "50", "--fewshot-seeds", "2", "--shots", "1,5", "--fractions", "0.1", "--no-report",
        "--no-progress"]


def run_cli(*args) -> int:
    """Run the ``riskdecomp`` command in-process; its exit status (0 when it returns normally)."""
    from riskdecomp.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code or 0
    return 0
