"""The pretraining loop: a recipe + a train split -> a trained encoder and its per-epoch loss history."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from riskdecomp.features.datasets import ImageSplit
from riskdecomp.pretrain.augment import Augmenter
from riskdecomp.pretrain.backbones import RecipeEncoder, build_recipe_encoder
from riskdecomp.pretrain.objectives import build_objective
from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.utils.device import resolve_device
from riskdecomp.utils.errors import DatasetError, TrainingError

# Input normalization of every riskdecomp-pretrained encoder: x_norm = (x / 255 - MEAN) / STD, per channel.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Float batch in [0, 1] -> (x - MEAN) / STD."""
    mean = torch.tensor(MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(STD, device=x.device)[None, :, None, None]
    return (x - mean) / std


# Intra-op threads while pretraining, whatever --jobs / --threads / the machine's cores: CPU reductions (conv and
# matmul backward, batch norm statistics) are split by thread, so the float sums -- and after a few hundred steps
# the weights -- depend on the thread count. A fixed count makes a checkpoint a function of (recipe, data, seed,
# torch version, CPU kind) only. One thread: no oversubscription when --jobs runs one pretraining per core.
PRETRAIN_THREADS = 1


@contextmanager
def deterministic_threads(n: int = PRETRAIN_THREADS):
    """Run the body with ``n`` torch intra-op threads and deterministic cuDNN kernels; restores both after."""
    old_threads = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    old_cudnn = (cudnn.deterministic, cudnn.benchmark)
    torch.set_num_threads(n)
    cudnn.deterministic, cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        cudnn.deterministic, cudnn.benchmark = old_cudnn


def _optimizer(recipe: Recipe, params):
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=0.9, weight_decay=recipe.weight_decay)
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Shuffled index batches; a trailing batch smaller than 2 is dropped (BatchNorm / contrastive losses need
    >= 2 samples), as is any trailing batch under half the batch size when there are full batches before it."""
    perm = torch.randperm(n, generator=generator)
    bs = min(batch_size, n)
    out = [perm[i:i + bs] for i in range(0, n, bs)]
    if len(out) > 1 and len(out[-1]) < max(2, bs // 2):
        out = out[:-1]
    return [b for b in out if len(b) >= 2]


def pretrain(recipe: Recipe, split: ImageSplit, *, device: str = "cpu",
             progress: bool = True) -> tuple[RecipeEncoder, pd.DataFrame]:
    """Train an encoder with ``recipe`` on ``split`` (the dataset's train split); returns ``(encoder, history)``.

    The split is held as one uint8 tensor (``split.to_uint8(recipe.image_size)``); each step draws
    ``recipe.n_views`` augmented views of a shuffled batch (one for ``supervised``) and minimizes the objective's
    loss with the recipe's optimizer. ``init`` returns the randomly initialized encoder (epochs ignored).
    Bit-identical on one machine for a fixed ``recipe.seed`` whatever the caller's thread settings: global seed +
    one generator for shuffling and augmentation, no data-loader workers, and ``PRETRAIN_THREADS`` intra-op threads
    (:func:`deterministic_threads`; the caller's count is restored afterwards).
    ``history``: one row per epoch with columns ``epoch``, ``loss`` (mean over the epoch's steps), ``seconds``.
    The encoder is returned in eval mode on ``device``.
    """
    with deterministic_threads():
        return _pretrain(recipe, split, device=device, progress=progress)


def _pretrain(recipe: Recipe, split: ImageSplit, *, device: str, progress: bool) -> tuple[RecipeEncoder, pd.DataFrame]:
    import time

    from tqdm.auto import tqdm

    device = resolve_device(device)
    torch.manual_seed(recipe.seed)
    encoder = build_recipe_encoder(recipe).to(device)
    history = pd.DataFrame({"epoch": pd.Series(dtype=int), "loss": pd.Series(dtype=float),
                            "seconds": pd.Series(dtype=float)})
    if recipe.objective == "init" or recipe.epochs == 0:
        return encoder.eval(), history
    n = len(split)
    if n < 2:
        raise DatasetError(f"{split.name}: the {split.split} split has {n} image(s); pretraining needs >= 2")
    labels = torch.as_tensor(np.asarray(split.labels), dtype=torch.long)
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    n_classes = max(n_classes, len(getattr(split, "classes", []) or []))
    objective = build_objective(recipe, encoder, n_classes=n_classes).to(device)
    images = split.to_uint8(recipe.image_size)
    params = [p for p in list(encoder.parameters()) + list(objective.parameters()) if p.requires_grad]
    opt = _optimizer(recipe, params)
    gen = torch.Generator().manual_seed(recipe.seed)
    augment = Augmenter(recipe.augment)
    n_views = objective.n_views_used or recipe.n_views
    rows = []
    bar = tqdm(range(recipe.epochs), desc=f"pretrain {recipe.objective}", disable=not progress, leave=False)
    encoder.train()
    objective.train()
    for epoch in bar:
        t0, losses = time.perf_counter(), []
        for idx in _batches(n, recipe.batch_size, gen):
            xb = images[idx]
            views = [normalize(augment(xb, gen)).to(device) for _ in range(n_views)]
            loss = objective.loss(encoder, views, labels[idx].to(device))
            if not torch.isfinite(loss):  # diverged: the recipe's settings, not a bug (one line, exit 2)
                raise TrainingError(f"pretraining {recipe.objective} diverged: the loss became {loss.item()} in "
                                    f"epoch {epoch + 1} of {recipe.epochs} (lr {recipe.lr:g}): try a lower lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            objective.after_step(encoder)
            losses.append(loss.item())
        rows.append({"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{rows[-1]['loss']:.4f}")
    history = pd.DataFrame(rows)
    return encoder.eval(), history
