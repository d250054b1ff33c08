"""What every source shares: the common entry fields (:class:`Entry`), the :class:`Source` interface, building a
frozen :class:`~riskdecomp.features.encoders.Encoder` through it, and the registry of sources (timm's idea: the
zoo's ``source:`` names one of them)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from riskdecomp.features.datasets import native_size
from riskdecomp.features.encoders import Encoder
from riskdecomp.utils.errors import RiskdecompError, WeightsError
from riskdecomp.utils.hashing import file_sha256
from riskdecomp.utils.names import name_problem

REPRESENTATIONS = ("pooled", "cls", "avg", "cls+avg", "4xcls")

# Design-choice fields of the published table (hyperparameters and metadata groups of all_results.csv).
METADATA_FIELDS = frozenset("""
objective ssl_mode version n_negatives n_classes is_stopgrad is_ema other pred_dim projection_hid_width
projection_hid_depth architecture_exact architecture family patch_size projection1_arch projection2_arch
projection_same n_parameters projection_nparameters pretraining_data finetuning_data img_size views
is_aug_invariant augmentations z_dim z_layer epochs batch_size optimizer learning_rate weight_decay scheduler
is_aug_autoaug is_aug_blur is_aug_color is_aug_crop is_aug_erasing is_aug_flip is_aug_gray is_aug_jigsaw
is_aug_masking is_aug_normalize is_aug_photometric is_aug_rotate is_aug_solarize is_aug_anygeometric
is_aug_anycolor n_augmentations nviews projection_nparameters_hidden
where notes month year license is_official is_industry is_our_extract n_pus pu_type time_hours
top1acc_in1k_official top1acc_in1k-1%_official top1acc_in1k-c5_official date_published
""".split())

MetaValue = Union[bool, int, float, str, list, None]


class Entry(BaseModel):
    """Fields every zoo entry has; a source's entry model adds ``source: Literal[<name>]`` and its own fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    representation: str = "pooled"
    reference: Optional[str] = None
    metadata: dict[str, MetaValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem:
            raise ValueError(f"name {problem}")
        return v

    @field_validator("representation")
    @classmethod
    def _known_representation(cls, v: str) -> str:
        if v not in REPRESENTATIONS:
            raise ValueError(f"unknown representation {v!r}: expected one of {', '.join(REPRESENTATIONS)}")
        return v

    @field_validator("metadata")
    @classmethod
    def _known_metadata(cls, v: dict) -> dict:
        unknown = sorted(set(v) - METADATA_FIELDS)
        if unknown:
            raise ValueError(f"unknown metadata field(s) {', '.join(unknown)} (use the published table's names)")
        return v

    # ------------------------------------------------------------------ what featurization asks of an entry
    # (riskdecomp.features.encoders.EncoderSpec: featurization never imports the sources; its entry's source answers)
    def precomputed_features(self):
        """The entry's own :class:`~riskdecomp.features.cache.Features` when its source has no encoder (a
        ``features`` entry), else None."""
        src = source_of(self)
        return None if src.has_encoder else src.load_features(self)

    def encoder_identity(self, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = False,
                         force: bool = False) -> str:
        """:meth:`Source.encoder_identity` of this entry."""
        return source_of(self).encoder_identity(self, dataset, cache_dir=cache_dir, device=device, progress=progress,
                                                force=force)

    def build_encoder(self, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = True,
                      force: bool = False) -> Encoder:
        """:meth:`Source.encoder` of this entry."""
        return source_of(self).encoder(self, dataset, cache_dir=cache_dir, device=device, progress=progress,
                                       force=force)


class SeededEntry(Entry):
    """An entry whose source builds the network itself (timm, torch_hub, checkpoint, huggingface). ``init_seed``
    (default 0): every build of its encoder runs with torch's CPU generator seeded with it (in a forked RNG state, so
    the caller's random stream is untouched), so weights a build leaves at their random initialization --
    ``pretrained: false``, the tensors ``strict: false`` leaves missing, whatever a torch.hub entrypoint does not
    load -- are a function of the entry: every build of it (featurize, a job's augmented views, another cache) is
    the same network. Where the build can leave such weights (:meth:`Source.random_init`) the seed is part of the
    feature-cache and run keys."""

    init_seed: int = Field(0, ge=0)


class Built(NamedTuple):
    """What a source's :meth:`Source.build` returns: the frozen module (``forward(batch) -> (N, D)``), its
    preprocessing (PIL image -> tensor, with ``input_size`` in px where known), the weights keys a non-strict load
    left out, and the SHA-256 of the weights used (None: not a local file)."""

    module: Any
    transform: Any
    ignored: dict
    sha256: Optional[str] = None


def no_ignored() -> dict:
    return {"missing": [], "unexpected": []}


def timm_version() -> str:
    import timm

    return f"timm{timm.__version__}"


def representation_key(entry) -> str:
    """The representation part of an identity: ``<representation>`` plus ``|size<N>`` with an ``image_size``."""
    rep = entry.representation
    if getattr(entry, "image_size", None):
        rep = f"{rep}|size{entry.image_size}"
    return rep


class Source:
    """One way of getting an encoder, registered under :attr:`name` (the zoo's ``source:`` value).

    A subclass declares its entry model (:attr:`entry`, a pydantic model deriving from :class:`Entry`), which of
    its fields hold local files (:attr:`files`: resolved against the zoo file's folder, keyed by content, never by
    location), whether it runs a repository's code (:attr:`runs_code`: its entries must say ``trust_repo: true``),
    how it builds the encoder (:meth:`build`) and what identifies its weights (:meth:`weights_sha256`,
    :meth:`identity`: part of the feature-cache and run keys, so they must not change for existing entries).
    A source without an encoder (precomputed features) overrides :meth:`load_features` and :meth:`dataset_name`.
    """

    name: ClassVar[str]
    entry: ClassVar[type]
    files: ClassVar[tuple] = ()
    runs_code: ClassVar[bool] = False
    has_encoder: ClassVar[bool] = True
    full_fields: ClassVar[tuple] = ()  # nested settings `zoo list --expanded` shows in full, defaults included

    # ------------------------------------------------------------------ what the zoo needs
    def what(self, entry) -> str:
        """The entry's key field in a few characters (``zoo list``'s ``what`` column)."""
        raise NotImplementedError

    def weights_label(self, entry) -> str:
        """Where the weights come from (``zoo list``'s ``weights`` column): ``hub``, ``file:<sha256[:12]>``
        (``file:missing``), ``random``, ``recipe`` or ``none``."""
        raise NotImplementedError

    def complete(self, entry):
        """The validated entry with whatever the source derives itself (e.g. a recipe's metadata); ValueError
        names a field the user wrote that contradicts it."""
        return entry

    # ------------------------------------------------------------------ data
    def dataset_name(self, entry) -> Optional[str]:
        """The name of the dataset the entry brings itself (None: it is evaluated on the loaded dataset)."""
        return None

    @property
    def needs_dataset(self) -> bool:
        return self.has_encoder

    def load_features(self, entry):
        raise NotImplementedError(f"source {self.name!r} has an encoder: featurize it")

    # ------------------------------------------------------------------ the encoder
    def build(self, entry, dataset, *, cache_dir, device, progress, force) -> Built:
        raise NotImplementedError

    def weights_sha256(self, entry, dataset, *, cache_dir, device, progress, force) -> Optional[str]:
        """SHA-256 of the weights the encoder will use, without building it (default: the file of the first
        :attr:`files` field; None when it has none)."""
        path = getattr(entry, self.files[0], None) if self.files else None
        if path is None:
            return None
        if not Path(path).is_file():
            raise WeightsError(f"model {entry.name!r}: weights file {path} not found")
        return file_sha256(path)

    def identity(self, entry, dataset, sha: Optional[str]) -> str:
        """What determines the entry's features (given the weights' SHA-256); the init seed is added by
        :meth:`full_identity` where it matters."""
        raise NotImplementedError

    def init_seed(self, entry) -> Optional[int]:
        """The seed the encoder is built under (:class:`SeededEntry`), None where the source seeds nothing (a recipe
        is seeded by its own ``recipe.seed`` and identified by its checkpoint's checksum)."""
        return getattr(entry, "init_seed", None)

    def random_init(self, entry) -> bool:
        """Whether a build may leave weights at their random initialization (then :meth:`init_seed` makes them)."""
        return False

    def full_identity(self, entry, dataset, sha: Optional[str]) -> str:
        """:meth:`identity`, plus ``|init-seed<N>`` when the build may leave random weights: the identity of a random
        initialization includes the seed that makes it (the feature-cache and run keys use this)."""
        ident = self.identity(entry, dataset, sha)
        seed = self.init_seed(entry)
        return f"{ident}|init-seed{seed}" if seed is not None and self.random_init(entry) else ident

    def stochastic(self, entry) -> bool:
        """Whether the encoder has a posterior (``posterior_variance`` scores)."""
        return False

    # ------------------------------------------------------------------ the frozen encoder, its identity
    def encoder(self, entry, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = True,
                force: bool = False) -> Encoder:
        """Build the frozen encoder of a zoo entry (:meth:`build`; ``features`` entries have none: see
        :mod:`riskdecomp.features.cache`), under the entry's init seed (:func:`seeded_init`: a random initialization
        is the same network in every build, and the seed is part of the identity). ``force``: a recipe entry is
        pretrained again even when its checkpoint is cached (once per process)."""
        if not self.has_encoder:
            raise RiskdecompError(f"model {entry.name!r}: source {entry.source!r} has no encoder to build")
        kw = dict(cache_dir=cache_dir, device=device, progress=progress, force=force)
        with seeded_init(self.init_seed(entry)):
            module, transform, ignored, sha = self.build(entry, dataset, **kw)
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        sha = sha or self.weights_sha256(entry, dataset, **kw)
        size, native = getattr(transform, "input_size", None), native_size(dataset)
        return Encoder(entry.name, module, transform, self.full_identity(entry, dataset, sha), ignored_keys=ignored,
                       weights_sha256=sha, input_size=size,
                       upscaled=None if size is None or native is None else size > native)

    def encoder_identity(self, entry, dataset=None, *, cache_dir=None, device: str = "cpu", progress: bool = False,
                         force: bool = False) -> str:
        """What determines an entry's features, without building the model (a fully cached rerun builds nothing):
        its :meth:`identity` of the SHA-256 of the weights used (file entries: the file; recipe entries: the cached
        checkpoint, pretrained first when it is not in ``cache_dir`` -- with ``force``, pretrained again),
        architecture, hub tag or random init and its init seed, representation, options, and the library version
        that defines the preprocessing. Part of the feature-cache key and of the run key, so both change when the
        weights do."""
        if not self.has_encoder:
            raise RiskdecompError(f"model {entry.name!r}: source {entry.source!r} has no encoder")
        sha = self.weights_sha256(entry, dataset, cache_dir=cache_dir, device=device, progress=progress, force=force)
        return self.full_identity(entry, dataset, sha)

    def feature_dim(self, entry) -> Optional[int]:
        """The width of the entry's representation when the entry alone says it, without building or loading
        anything (None: only its features tell; the runner reads the cached features otherwise)."""
        return None


def file_label(path) -> str:
    """``file:<sha256[:12]>`` of a local weights file, ``file:missing`` when it is absent."""
    return "file:" + file_sha256(path)[:12] if Path(path).is_file() else "file:missing"


@contextmanager
def seeded_init(seed: Optional[int]):
    """Run the block with torch's CPU generator seeded with ``seed`` (None: as it is), restoring the caller's state
    afterwards: a model built inside is initialized the same way whatever ran before it in the process."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


# ------------------------------------------------------------------------------------------------- the registry
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
