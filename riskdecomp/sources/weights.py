"""Weights a user gives as a file: read safely, loaded strictly. Shared by the sources that load a file into an
architecture (``timm`` and ``checkpoint``).

Weights are only ever read from safetensors or with ``torch.load(weights_only=True)``: a ``.pt`` that holds pickled
code is refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from riskdecomp.utils.errors import WeightsError


def load_state_dict(path: Path, who: str) -> dict:
    """A state dict from ``.safetensors`` or a weights-only ``.pt``; never executes pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{who}: weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error types
            raise WeightsError(f"{who}: {path} is not a valid safetensors file ({exc})") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        kind = type(exc).__name__
        raise WeightsError(f"{who}: refusing {path}: not a weights-only checkpoint ({kind}); "
                           "save it with safetensors or as a plain state dict") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(f"{who}: {path} does not hold a state dict of tensors")
    return sd


def _first(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")


def load_weights(model: nn.Module, sd: dict, who: str, path, arch: str, strict: bool = True) -> dict:
    """Load state dict ``sd`` (from ``path``) into ``model``; every load of user weights goes through here.

    Strict (the default): any key of the model missing from the file, any key of the file unknown to the model, or
    any shape mismatch is a WeightsError naming the entry and the first keys -- a partial load would leave layers
    at their random initialization and still produce a full leaderboard row. ``strict=False`` (the zoo's
    ``strict: false``, e.g. for a file holding extra heads) tolerates missing and unexpected keys and returns them
    (``{"missing": [...], "unexpected": [...]}``, for the run record); shape mismatches and a file of which no
    tensor fits stay errors."""
    own = model.state_dict()
    shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
    if shapes:
        k = shapes[0]
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} (shape mismatch: {k} is "
                           f"{tuple(sd[k].shape)} in the file, {tuple(own[k].shape)} in the model"
                           f"{f'; {len(shapes)} tensors differ' if len(shapes) > 1 else ''})")
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if not set(sd) & set(own):
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} (no tensor of the file has a "
                           f"place in the model; the file holds {_first(sd)})")
    if strict and (missing or unexpected):
        parts = ([f"missing {_first(missing)}"] if missing else []) + (
            [f"unexpected {_first(unexpected)}"] if unexpected else [])
        raise WeightsError(f"{who}: weights {path} do not fit architecture {arch!r} ({'; '.join(parts)}); "
                           "set strict: false to load the matching tensors only")
    model.load_state_dict(sd, strict=False)
    return {"missing": missing, "unexpected": unexpected}
