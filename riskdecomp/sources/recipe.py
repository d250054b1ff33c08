"""``source: recipe``: an encoder riskdecomp pretrains itself on the dataset's train split (cached by recipe)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from riskdecomp.pretrain.recipe import Recipe
from riskdecomp.sources import register
from riskdecomp.sources.base import Built, Entry, Source, no_ignored, representation_key
from riskdecomp.utils.errors import RiskdecompError


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
        from riskdecomp.zoo.expand import with_recipe_metadata

        return entry.model_copy(update={"metadata": with_recipe_metadata(entry.metadata, entry.recipe)})

    def stochastic(self, entry) -> bool:
        return entry.recipe.objective == "stochastic"

    def feature_dim(self, entry) -> int:
        return int(entry.recipe.z_dim)  # the encoder's output (the representation; a stochastic one's mean)

    def checkpoint(self, entry, dataset, *, cache_dir, device, progress, force) -> Path:
        """The recipe's checkpoint in the cache, pretrained first when it is not there (again with ``force``)."""
        from riskdecomp import pretrain
        from riskdecomp.features.encoders import default_cache_dir

        if dataset is None:
            raise RiskdecompError(f"model {entry.name!r}: a recipe entry needs a dataset to pretrain on")
        return pretrain.pretrained_checkpoint(entry.recipe, dataset, Path(cache_dir or default_cache_dir()),
                                              device=device, progress=progress, force=force)

    def weights_sha256(self, entry, dataset, **kw) -> str:
        """The weights checksum the (verified) checkpoint's sidecar records."""
        from riskdecomp.pretrain.checkpoint import read_sidecar

        return read_sidecar(self.checkpoint(entry, dataset, **kw))["sha256"]

    def build(self, entry, dataset, **kw) -> Built:
        from riskdecomp import pretrain
        from riskdecomp.features.encoders import _native_size
        from riskdecomp.pretrain.checkpoint import read_sidecar

        path = self.checkpoint(entry, dataset, **kw)
        encoder, recipe = pretrain.load_checkpoint(path)
        transform = pretrain.eval_transform(recipe, _native_size(dataset) or 32, size=entry.image_size)
        return Built(encoder, transform, no_ignored(), read_sidecar(path)["sha256"])

    def identity(self, entry, dataset, sha) -> str:
        return f"recipe|{entry.recipe.key()}|{dataset.fingerprint}|{sha}|{representation_key(entry)}"
