"""``source: torch_hub``: a torch.hub entry point (runs the repository's code: ``trust_repo: true`` required)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator

from riskdecomp.sources import register
from riskdecomp.sources.base import Built, Entry, Source, no_ignored, representation_key
from riskdecomp.utils.errors import RiskdecompError

# torch.hub repositories: 'owner/name' or 'owner/name:ref' (torch.hub names its cache folder after them)
REPO_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_-][A-Za-z0-9_.-]*(:[A-Za-z0-9_-][A-Za-z0-9_./-]*)?$")


class TorchHubEntry(Entry):
    """A torch.hub entry point; runs the repository's code, so it needs an explicit ``trust_repo: true``."""

    source: Literal["torch_hub"]
    repo: str
    entrypoint: str
    trust_repo: bool = Field(False, validate_default=True)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("repo")
    @classmethod
    def _safe_repo(cls, v: str) -> str:
        if not REPO_RE.fullmatch(v) or ".." in v.split(":")[0]:
            raise ValueError(f"repo {v!r}: expected 'owner/name' or 'owner/name:ref' (GitHub)")
        return v

    @field_validator("entrypoint")
    @classmethod
    def _safe_entrypoint(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError(f"entrypoint {v!r}: expected a Python function name")
        return v

    @field_validator("trust_repo")
    @classmethod
    def _must_trust(cls, v: bool) -> bool:
        if v is not True:
            raise ValueError("torch_hub runs the repository's code: set trust_repo: true to allow it")
        return v


@register
class TorchHub(Source):
    name = "torch_hub"
    entry = TorchHubEntry
    runs_code = True

    def what(self, entry) -> str:
        return entry.entrypoint

    def weights_label(self, entry) -> str:
        return "hub"

    def build(self, entry, dataset, **_) -> Built:
        import torch
        from torch import nn

        from riskdecomp.features.encoders import Representation, _imagenet_transform

        who = f"model {entry.name!r}"
        try:
            model = torch.hub.load(entry.repo, entry.entrypoint, trust_repo=True, **entry.kwargs)
        except Exception as exc:
            raise RiskdecompError(f"{who}: torch.hub.load({entry.repo!r}, {entry.entrypoint!r}) failed: "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        if entry.representation == "pooled" and isinstance(getattr(model, "fc", None), nn.Linear):
            model.fc = nn.Identity()  # torchvision-style ResNets from SSL repos keep a (random) classifier: drop it
        if entry.representation != "pooled":
            model = Representation(model, entry.representation, who)
        return Built(model, _imagenet_transform(), no_ignored())

    def identity(self, entry, dataset, sha) -> str:
        return (f"hub|{entry.repo}|{entry.entrypoint}|{sorted(entry.kwargs.items())}|{representation_key(entry)}|"
                "imagenet224")
