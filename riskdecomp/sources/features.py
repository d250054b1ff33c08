"""``source: features``: precomputed embeddings (an ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test``);
no encoder, no dataset to load: the file names its own dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import field_validator

from riskdecomp.features.cache import load_features_npz
from riskdecomp.sources.base import Entry, Source, register
from riskdecomp.utils.names import name_problem


class FeaturesEntry(Entry):
    """Precomputed embeddings: an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

    source: Literal["features"]
    path: Path
    dataset: Optional[str] = None  # the name of the dataset the features come from (default: the file's stem)

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, v: Optional[str]) -> Optional[str]:
        problem = None if v is None else name_problem(v)
        if problem:
            raise ValueError(f"dataset {problem}")
        return v


@register
class FeaturesSource(Source):
    name = "features"
    entry = FeaturesEntry
    files = ("path",)
    has_encoder = False

    def what(self, entry) -> str:
        return str(entry.path)

    def weights_label(self, entry) -> str:
        return "none"

    def dataset_name(self, entry) -> str:
        return entry.dataset or Path(entry.path).stem

    def load_features(self, entry):
        return load_features_npz(entry)
