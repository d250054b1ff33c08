"""The one device rule: ``auto`` picks ``cuda`` > ``mps`` > ``cpu``; anything else is used as given."""

from __future__ import annotations

from typing import Optional, Union

import torch


def resolve_device(device: Optional[Union[str, torch.device]] = "auto") -> str:
    """The torch device string for ``device`` (``"auto"``/None: cuda if available, else mps if available, else
    cpu; a ``torch.device`` or any other string: as given)."""
    if isinstance(device, torch.device):
        return str(device)
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    return device
