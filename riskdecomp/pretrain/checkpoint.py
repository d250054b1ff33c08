"""Checkpoints of riskdecomp-pretrained encoders: ``.safetensors`` weights + a JSON sidecar, and the recipe cache.

Layout: ``PATH.safetensors`` holds the backbone's state dict (keys as in ``create_backbone(...).state_dict()``, so a
``source: checkpoint`` zoo entry with ``architecture: smallcnn`` and the sidecar's ``model_kwargs`` loads it with
``strict=True``); ``PATH.safetensors.json`` holds the full recipe, the backbone arguments, the input normalization,
the image size, the training history and ``sha256``, the checksum of the weights file's bytes. Both are written
atomically (:mod:`riskdecomp.utils.atomic`), weights first, so a sidecar never describes missing weights.
Loading verifies the checksum: a swapped or corrupted weights file is an error (a cached one is retrained instead).
Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from riskdecomp.features.datasets import load_dataset
from riskdecomp.pretrain.backbones import (
    RecipeEncoder,
    backbone_kwargs,
    build_recipe_encoder,
)
from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.pretrain.train import MEAN, STD, pretrain
from riskdecomp.utils.atomic import atomic_write_bytes, atomic_write_text
from riskdecomp.utils.device import resolve_device
from riskdecomp.utils.errors import CacheError, WeightsError
from riskdecomp.utils.hashing import file_sha256

FORMAT = "riskdecomp-pretrain-v1"
log = logging.getLogger(__name__)


def sidecar_path(path) -> Path:
    """The JSON sidecar of a checkpoint: ``<path>.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def save_checkpoint(path, encoder: RecipeEncoder, recipe: Recipe, history=None) -> Path:
    """Write ``encoder``'s backbone weights to ``path`` (safetensors) and the sidecar ``<path>.json``."""
    from safetensors.torch import save

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.backbone.state_dict().items()}
    if history is not None and hasattr(history, "to_dict"):
        history = history.to_dict(orient="records")
    meta = {
        "format": FORMAT,
        "recipe": recipe.model_dump(mode="json"),
        "recipe_key": recipe.key(),
        "architecture": recipe.backbone,
        "model_kwargs": backbone_kwargs(recipe),
        "z_dim": recipe.z_dim,
        "stochastic": recipe.objective == "stochastic",
        "normalization": {"mean": list(MEAN), "std": list(STD)},
        "image_size": recipe.image_size,
        "history": history or [],
    }

    data = save(state, metadata={"format": FORMAT})
    meta["sha256"] = hashlib.sha256(data).hexdigest()  # of the bytes written
    atomic_write_bytes(path, data)  # weights first: a sidecar never describes missing weights
    atomic_write_text(sidecar_path(path), json.dumps(meta, indent=1, sort_keys=True))
    return path


def read_sidecar(path) -> dict:
    """The parsed sidecar of checkpoint ``path`` (WeightsError when missing or malformed)."""
    side = sidecar_path(path)
    try:
        meta = json.loads(side.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{side}: checkpoint sidecar not found (expected next to {Path(path).name})") from None
    except (OSError, ValueError) as exc:
        raise WeightsError(f"{side}: unreadable checkpoint sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "recipe" not in meta:
        raise WeightsError(f"{side}: not a riskdecomp pretraining sidecar (format {FORMAT!r} expected)")
    return meta


def verify_checksum(path, meta: dict, required: bool = False) -> None:
    """WeightsError unless the weights file's SHA-256 is the sidecar's ``sha256`` (a sidecar written before
    checksums existed has none: accepted unless ``required``, as for the recipe cache)."""
    want = meta.get("sha256")
    if want is None:
        if required:
            raise WeightsError(f"{sidecar_path(path)}: no weights checksum (written by an older riskdecomp)")
        return
    got = file_sha256(path)
    if got != want:
        raise WeightsError(f"{path}: weights do not match the checksum in {sidecar_path(path).name} (sha256 "
                           f"{got[:12]}, expected {str(want)[:12]}): the file was swapped or corrupted")


def load_checkpoint(path, device: str = "cpu", require_checksum: bool = False) -> tuple[RecipeEncoder, Recipe]:
    """Rebuild ``(encoder, recipe)`` from a checkpoint written by :func:`save_checkpoint` (eval mode), after
    verifying the weights against the sidecar's checksum (:func:`verify_checksum`)."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: checkpoint not found")
    meta = read_sidecar(path)
    verify_checksum(path, meta, required=require_checksum)
    try:
        recipe = Recipe.model_validate(meta["recipe"])
    except ValidationError as exc:
        raise WeightsError(f"{sidecar_path(path)}: invalid recipe ({exc.errors()[0]['msg']})") from None
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: unreadable safetensors file ({exc})") from None
    encoder = build_recipe_encoder(recipe)
    try:
        encoder.backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise WeightsError(f"{path}: weights do not fit the recipe's {recipe.backbone} backbone ({first})") from None
    return encoder.to(device).eval(), recipe


def eval_transform(recipe_or_sidecar: Union[Recipe, dict, str, Path, None], native_size: Optional[int] = None,
                   size: Optional[int] = None) -> Callable:
    """PIL image -> normalized float tensor (3, S, S) as the encoder saw during pretraining: resized (bilinear)
    to ``size`` (the zoo entry's ``image_size:`` override), else the recipe's ``image_size`` (``None``:
    ``native_size``, or left as is), scaled to [0, 1], then (x - mean) / std with the checkpoint's normalization.
    Accepts a Recipe, a sidecar dict, a checkpoint path, or ``None`` (riskdecomp's default normalization at
    ``native_size``: a bare ``smallcnn`` checkpoint). The returned function's ``input_size`` is S (None: as is)."""
    override = size
    import numpy as np
    from PIL import Image

    if isinstance(recipe_or_sidecar, (str, Path)):
        recipe_or_sidecar = read_sidecar(recipe_or_sidecar)
    if recipe_or_sidecar is None:
        size, mean, std = None, MEAN, STD
    elif isinstance(recipe_or_sidecar, Recipe):
        size, mean, std = recipe_or_sidecar.image_size, MEAN, STD
    else:
        norm = recipe_or_sidecar.get("normalization") or {"mean": MEAN, "std": STD}
        size = recipe_or_sidecar.get("image_size", recipe_or_sidecar.get("recipe", {}).get("image_size"))
        mean, std = norm["mean"], norm["std"]
    size = override or size or native_size
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def transform(img):
        img = img.convert("RGB")
        if size is not None and img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
        return (x - mean_t) / std_t

    transform.input_size = size
    # its content, for riskdecomp.features.decode.preprocessing_key (encoders with equal keys share one decoding pass)
    transform.preprocessing_key = json.dumps(["riskdecomp.eval_transform", size, mean_t.flatten().tolist(),
                                              std_t.flatten().tolist()])
    return transform


def _valid(path: Path, recipe: Recipe) -> bool:
    """A cached checkpoint is reused when both files exist, the sidecar names the same recipe, the weights match
    its checksum and it loads; anything else is logged and retrained."""
    if not (path.is_file() and sidecar_path(path).is_file()):
        return False
    try:
        meta = read_sidecar(path)
        if meta.get("recipe_key") != recipe.key():
            raise WeightsError(f"{sidecar_path(path)}: names another recipe")
        load_checkpoint(path, require_checksum=True)
    except (WeightsError, KeyError) as exc:
        log.warning("cached checkpoint unusable, pretraining again: %s", exc)
        return False
    return True


def checkpoint_path(recipe: Recipe, dataset, cache_dir) -> Path:
    """``cache_dir/recipes/<recipe.key()>-<dataset.fingerprint>.safetensors``."""
    return Path(cache_dir) / "recipes" / f"{recipe.key()}-{dataset.fingerprint}.safetensors"


_RETRAINED: set = set()  # checkpoints this process pretrained under ``force`` (retrained once, not once per call)


def pretrained_checkpoint(recipe: Recipe, dataset, cache_dir, *, device: str = "cpu", progress: bool = True,
                          force: bool = False) -> Path:
    """The checkpoint of ``recipe`` pretrained on ``dataset.train``: reused from the cache when present and valid
    (sidecar, recipe and weights checksum agree), else trained and saved. ``force``: pretrained again even when
    valid -- once per process, so the several calls of one job (run key, features, extras) use one fresh
    checkpoint; the old one stays in place until the new one is complete. A file lock (``<path>.lock``) makes
    concurrent processes train it once: the second waits, then finds the finished checkpoint."""
    from filelock import FileLock, Timeout

    path = checkpoint_path(recipe, dataset, cache_dir)
    force = force and path not in _RETRAINED
    if not force and _valid(path, recipe):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path) + ".lock")
    try:
        with lock.acquire(timeout=6 * 3600):
            if not force and _valid(path, recipe):
                return path
            encoder, history = pretrain(recipe, dataset.train, device=resolve_device(device), progress=progress)
            save_checkpoint(path, encoder, recipe, history)
            if force:
                _RETRAINED.add(path)
    except Timeout:
        raise CacheError(f"{path}.lock: another process holds the pretraining lock for hours; remove it") from None
    return path


def pretrain_to_file(recipe: Recipe, dataset_spec: str, out_path, device: str = "auto", progress: bool = True) -> Path:
    """``riskdecomp pretrain``: train ``recipe`` on the train split of ``dataset_spec`` and write a checkpoint
    (``out_path`` + ``out_path.json``); returns ``out_path``."""
    if isinstance(recipe, dict):
        recipe = Recipe.model_validate(recipe)
    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise WeightsError(f"{out}: the checkpoint file must end with .safetensors")
    dataset = load_dataset(dataset_spec)
    encoder, history = pretrain(recipe, dataset.train, device=resolve_device(device), progress=progress)
    return save_checkpoint(out, encoder, recipe, history)
