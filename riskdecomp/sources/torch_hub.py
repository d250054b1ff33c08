"""``source: torch_hub``: a torch.hub entry point (runs the repository's code: ``trust_repo: true`` required)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field, field_validator

from riskdecomp.sources.base import (
    Built,
    SeededEntry,
    Source,
    file_sha256,
    no_ignored,
    register,
    representation_key,
)
from riskdecomp.sources.timm import Representation
from riskdecomp.utils.errors import RiskdecompError

# torch.hub repositories: 'owner/name' or 'owner/name:ref' (torch.hub names its cache folder after them)
REPO_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_-][A-Za-z0-9_.-]*(:[A-Za-z0-9_-][A-Za-z0-9_./-]*)?$")


class TorchHubEntry(SeededEntry):
    """A torch.hub entry point; runs the repository's code, so it needs an explicit ``trust_repo: true``. Whatever
    the entrypoint does not load (``pretrained=False``, a fresh head) is initialized under ``init_seed``."""

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


def repo_dir(repo: str) -> Optional[Path]:
    """The folder where torch.hub keeps ``repo``'s code (``<hub dir>/<owner>_<name>_<ref>``; without a ref, the
    default branch's, main or master), None when it is not downloaded."""
    import torch

    owner_name, _, ref = repo.partition(":")
    owner, name = owner_name.split("/")
    for r in [ref] if ref else ["main", "master"]:
        d = Path(torch.hub.get_dir()) / "_".join([owner, name, r.replace("/", "_")])
        if d.is_dir():
            return d
    return None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_transform():
    """The ImageNet eval preprocessing a hub model expects: resize 256, center crop 224, normalize."""
    from torchvision import transforms as T

    transform = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    transform.input_size = 224
    return transform


def _failed(entry, exc) -> RiskdecompError:
    return RiskdecompError(f"model {entry.name!r}: torch.hub.load({entry.repo!r}, {entry.entrypoint!r}) failed: "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")


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

        who = f"model {entry.name!r}"
        try:
            model = torch.hub.load(entry.repo, entry.entrypoint, trust_repo=True, **entry.kwargs)
        except Exception as exc:
            raise _failed(entry, exc) from None
        if entry.representation == "pooled" and isinstance(getattr(model, "fc", None), nn.Linear):
            model.fc = nn.Identity()  # torchvision-style ResNets from SSL repos keep a (random) classifier: drop it
        if entry.representation != "pooled":
            model = Representation(model, entry.representation, who)
        return Built(model, imagenet_transform(), no_ignored())

    def weights_sha256(self, entry, dataset, **_) -> Optional[str]:
        """One SHA-256 over the repository's Python files as torch.hub caches them (``hubconf.py`` and the code it
        imports: what builds the network), fetched first when absent, as :meth:`build` would."""
        import torch

        folder = repo_dir(entry.repo)
        if folder is None:
            try:
                torch.hub.list(entry.repo, trust_repo=True, verbose=False)
            except Exception as exc:
                raise _failed(entry, exc) from None
            folder = repo_dir(entry.repo)
        if folder is None:
            return None
        code = {p.relative_to(folder).as_posix(): file_sha256(p) for p in sorted(folder.rglob("*.py"))
                if not any(part.startswith(".") for part in p.relative_to(folder).parts)}
        return hashlib.sha256(json.dumps(code, sort_keys=True).encode()).hexdigest()

    def random_init(self, entry) -> bool:
        return True  # the entrypoint's code decides what it loads: its random part is the init seed's

    def identity(self, entry, dataset, sha) -> str:
        return (f"hub|{entry.repo}|{entry.entrypoint}|{sorted(entry.kwargs.items())}|{representation_key(entry)}|"
                f"imagenet224|code:{sha}")
