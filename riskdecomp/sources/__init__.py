"""Encoder sources as a registry (timm's idea): the zoo's ``source:`` names one of them.

One module per source (``timm``, ``torch_hub``, ``checkpoint``, ``features``, ``recipe``, ``huggingface``) declares
its entry schema, how it builds the encoder (everything it needs for that: timm's creation, file loading and
preprocessing live in ``timm.py``; strict weight loading, shared by the sources that read a file, in ``weights.py``),
what identifies its weights and what it needs, as a :class:`~riskdecomp.sources.base.Source` subclass decorated with
:func:`~riskdecomp.sources.base.register`. The rest of the package asks the registry (:func:`source_of`,
:func:`entry_classes`, :func:`names`) and never tests entry types; featurization gets built encoders from the
entries themselves (:meth:`~riskdecomp.sources.base.Entry.build_encoder`) and never imports this package.

Adding a source: write ``riskdecomp/sources/<name>.py`` (an entry model + a registered Source), add it to the import
list at the end of this file, write its tests, and document it in the README's zoo section.
"""

from __future__ import annotations

# the registry and the sources' shared names (riskdecomp.sources.base), where the rest of the package looks for them
from riskdecomp.sources.base import (  # noqa: F401
    REPRESENTATIONS,
    Built,
    Entry,
    Source,
    entry_classes,
    file_sha256,
    get,
    names,
    register,
    source_of,
)

# the registry list, in the order names() reports: one import per source module (each registers itself)
from riskdecomp.sources import timm, torch_hub, checkpoint, features, recipe, huggingface  # noqa: E402,F401,I001
