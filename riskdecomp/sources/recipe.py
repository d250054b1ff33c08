"""``source: recipe``: an encoder riskdecomp pretrains itself on the dataset's train split (cached by recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field

from riskdecomp.features.datasets import native_size
from riskdecomp.features.encoders import default_cache_dir
from riskdecomp.pretrain.backbones import build_recipe_encoder, count_parameters
from riskdecomp.pretrain.checkpoint import (
    eval_transform,
    load_checkpoint,
    pretrained_checkpoint,
    read_sidecar,
)
from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.sources.base import (
    Built,
    Entry,
    Source,
    no_ignored,
    register,
    representation_key,
)
from riskdecomp.utils.errors import RiskdecompError

SSL_MODES = {"simclr": "contrastive", "stochastic": "contrastive", "byol": "siamese", "simsiam": "siamese",
             "vicreg": "siamese", "barlow_twins": "siamese", "supervised": "supervised", "init": "initialized"}
_FAMILIES = {"smallcnn": "cnn"}  # riskdecomp's own backbones; a timm backbone's family is the user's to write
# (recipe field, augmentation name in the published table's `augmentations` list / is_aug_<name>)
_AUGS = (("crop", "crop"), ("flip", "flip"), ("color_jitter", "color"), ("grayscale", "gray"), ("blur", "blur"))


def recipe_metadata(recipe) -> dict:
    """The metadata (published table's names) that a recipe determines: the zoo never asks the user for them.

    ``init`` is a random initialization: no training (``epochs`` 0, no batch size) and no augmentations but the
    input normalization. Projection fields describe the SSL head (None for supervised / init); ``n_negatives``
    counts the other views of a batch for contrastive objectives. ``scheduler`` is ``constant``: riskdecomp's
    pretraining uses no learning-rate schedule."""
    obj, head = recipe.objective, recipe.head
    ssl = obj not in ("supervised", "init")
    trained = obj != "init"
    used = [short for fld, short in _AUGS if trained and getattr(recipe.augment, fld)] + ["normalize"]
    try:
        with torch.device("meta"):  # counts parameters without allocating them
            n_params = count_parameters(build_recipe_encoder(recipe).backbone)
    except Exception:  # noqa: BLE001 - a backbone that cannot be built on 'meta': build it for real
        n_params = count_parameters(build_recipe_encoder(recipe).backbone)
    meta = {
        "objective": obj, "ssl_mode": SSL_MODES[obj], "architecture": recipe.backbone,
        "architecture_exact": recipe.backbone, "z_dim": recipe.z_dim, "epochs": recipe.epochs if trained else 0,
        "batch_size": recipe.batch_size if trained else None, "nviews": recipe.n_views if ssl else 1,
        "optimizer": recipe.optimizer, "learning_rate": recipe.lr, "weight_decay": recipe.weight_decay,
        "scheduler": "constant", "augmentations": used, "n_augmentations": len(used),
        **{f"is_aug_{short}": short in used for _, short in _AUGS}, "is_aug_normalize": True,
        "projection2_arch": ({"none": "identity"}.get(head.kind, head.kind) if ssl else None),
        "projection_hid_depth": (head.depth - 1 if head.kind == "mlp" else 0) if ssl else None,
        "projection_hid_width": head.width if ssl and head.kind == "mlp" else None,
        "pred_dim": head.out_dim if ssl else None,
        "is_stopgrad": obj in ("byol", "simsiam"), "is_ema": obj == "byol",
        "n_negatives": 2 * recipe.batch_size - 2 if obj in ("simclr", "stochastic") else None,
        "n_parameters": n_params,
    }
    if recipe.backbone in _FAMILIES:
        meta["family"] = _FAMILIES[recipe.backbone]
    if recipe.image_size is not None:
        meta["img_size"] = recipe.image_size
    return meta


def with_recipe_metadata(metadata: dict, recipe) -> dict:
    """``metadata`` completed with :func:`recipe_metadata`; ValueError naming the first field the user wrote that
    contradicts the recipe."""
    derived = recipe_metadata(recipe)
    for k, v in metadata.items():
        if k in derived and (v != derived[k] or isinstance(v, bool) != isinstance(derived[k], bool)):
            raise ValueError(f"field 'metadata.{k}': {v!r} contradicts the recipe ({derived[k]!r}); drop it: "
                             "the recipe determines it")
    return {**metadata, **derived}


class RecipeEntry(Entry):
    """An encoder pretrained by riskdecomp itself on the dataset's train split (cached by recipe hash)."""

    source: Literal["recipe"]
    recipe: Recipe
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # evaluation input side (default: recipe.image_size)


@register
class RecipeSource(Source):
    name = "recipe"
    entry = RecipeEntry
    full_fields = ("recipe",)

    def what(self, entry) -> str:
        return f"{entry.recipe.objective}/{entry.recipe.backbone}"

    def weights_label(self, entry) -> str:
        return "random" if entry.recipe.objective == "init" else "recipe"

    def complete(self, entry):
        return entry.model_copy(update={"metadata": with_recipe_metadata(entry.metadata, entry.recipe)})

    def stochastic(self, entry) -> bool:
        return entry.recipe.objective == "stochastic"

    def feature_dim(self, entry) -> int:
        return int(entry.recipe.z_dim)  # the encoder's output (the representation; a stochastic one's mean)

    def checkpoint(self, entry, dataset, *, cache_dir, device, progress, force) -> Path:
        """The recipe's checkpoint in the cache, pretrained first when it is not there (again with ``force``)."""
        if dataset is None:
            raise RiskdecompError(f"model {entry.name!r}: a recipe entry needs a dataset to pretrain on")
        return pretrained_checkpoint(entry.recipe, dataset, Path(cache_dir or default_cache_dir()),
                                     device=device, progress=progress, force=force)

    def weights_sha256(self, entry, dataset, **kw) -> str:
        """The weights checksum the (verified) checkpoint's sidecar records."""
        return read_sidecar(self.checkpoint(entry, dataset, **kw))["sha256"]

    def build(self, entry, dataset, **kw) -> Built:
        path = self.checkpoint(entry, dataset, **kw)
        encoder, recipe = load_checkpoint(path)
        transform = eval_transform(recipe, native_size(dataset) or 32, size=entry.image_size)
        return Built(encoder, transform, no_ignored(), read_sidecar(path)["sha256"])

    def identity(self, entry, dataset, sha) -> str:
        return f"recipe|{entry.recipe.key()}|{dataset.fingerprint}|{sha}|{representation_key(entry)}"
