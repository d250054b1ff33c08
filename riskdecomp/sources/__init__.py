"""Encoder sources as a registry (timm's idea): the zoo's ``source:`` names one of them.

One module per source (``timm``, ``torch_hub``, ``checkpoint``, ``features``, ``recipe``, ``huggingface``) declares
its entry schema, how it builds the encoder, what identifies its weights and what it needs, as a
:class:`~riskdecomp.sources.base.Source` subclass decorated with :func:`register`. The rest of the package asks
the registry (:func:`source_of`, :func:`entry_classes`, :func:`names`) and never tests entry types.

Adding a source: write ``riskdecomp/sources/<name>.py`` (an entry model + a registered Source), add it to the import
list at the end of this file, write its tests, and document it in the README's zoo section.
"""

from __future__ import annotations

from riskdecomp.sources.base import REPRESENTATIONS, Built, Entry, Source, file_sha256  # noqa: F401 (the sources' shared names)
from riskdecomp.utils.errors import RiskdecompError

_REGISTRY: dict = {}


def register(cls):
    """Class decorator: register a :class:`Source` subclass under its ``name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"source {cls.name!r} is registered twice")
    if cls.entry.model_fields["source"].annotation.__args__ != (cls.name,):
        raise ValueError(f"source {cls.name!r}: its entry model's 'source' must be Literal[{cls.name!r}]")
    _REGISTRY[cls.name] = cls()
    return cls


def names() -> tuple:
    """The registered source names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Source:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise RiskdecompError(f"unknown source {name!r} (expected one of {', '.join(_REGISTRY)})") from None


def source_of(entry) -> Source:
    """The source of a validated zoo entry."""
    return get(entry.source)


def entry_classes() -> dict:
    """``{source name: entry model}``."""
    return {n: s.entry for n, s in _REGISTRY.items()}


# the registry list, in the order names() reports: one import per source module (each registers itself)
from riskdecomp.sources import timm, torch_hub, checkpoint, features, recipe, huggingface  # noqa: E402,F401,I001
