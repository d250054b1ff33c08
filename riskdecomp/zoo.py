"""The zoo registry: a YAML file listing encoders, validated into typed entries.

File shape::

    defaults:          # optional: fields merged into every entry (the entry wins; metadata merged key by key)
      metadata: {pretraining_data: digits}
      seeds: [0, 1, 2]  # optional (recipe entries): one entry per pretraining seed, named <name>.s<seed>
                        # (riskdecomp.seeds); the leaderboard pools them into one row per model
    models:
      - name: dino_vits16                   # unique, [a-z0-9_.-]+, not starting with '.'
        source: timm                        # timm | torch_hub | checkpoint | features | recipe
        model: vit_small_patch16_224.dino   # source-specific fields...
        pretrained: true
        representation: cls                 # pooled | cls | avg | cls+avg | 4xcls
        reference: sup_vits16               # optional: a supervised entry of the same architecture
        metadata: {objective: DINO, ssl_mode: hierarchical, architecture: vits16, ...}

``metadata`` uses the field names of the published study's table (see ``METADATA_FIELDS``); an unknown name is an
error so that a typo cannot silently drop a design choice from the analyses. Relative paths are resolved against
the zoo file's folder. Every problem is reported as one line naming the file, the entry and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from .errors import ZooError
from .pretrain.recipe import Recipe

NAME_RE = re.compile(r"^[a-z0-9_-][a-z0-9_.-]*$")
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


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    representation: str = "pooled"
    reference: Optional[str] = None
    metadata: dict[str, MetaValue] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"name {v!r} must match [a-z0-9_.-]+ and not start with '.' (it names cache files)")
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


class TimmEntry(_Entry):
    """A timm architecture; weights from the hub (``pretrained: true``) or a local file (``weights``)."""

    source: Literal["timm"]
    model: str
    pretrained: bool = False
    weights: Optional[Path] = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)


class TorchHubEntry(_Entry):
    """A torch.hub entry point; runs the repository's code, so it needs an explicit ``trust_repo: true``."""

    source: Literal["torch_hub"]
    repo: str
    entrypoint: str
    trust_repo: bool = Field(False, validate_default=True)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("trust_repo")
    @classmethod
    def _must_trust(cls, v: bool) -> bool:
        if v is not True:
            raise ValueError("torch_hub runs the repository's code: set trust_repo: true to allow it")
        return v


class CheckpointEntry(_Entry):
    """An architecture (timm name or one of riskdecomp's backbones) + a local ``.safetensors`` / ``.pt`` file."""

    source: Literal["checkpoint"]
    architecture: str
    weights: Path
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("weights")
    @classmethod
    def _safe_suffix(cls, v: Path) -> Path:
        if v.suffix not in (".safetensors", ".pt", ".pth", ".bin"):
            raise ValueError(f"weights {str(v)!r}: expected a .safetensors (or a weights-only .pt/.pth) file")
        return v


class FeaturesEntry(_Entry):
    """Precomputed embeddings: an ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``."""

    source: Literal["features"]
    path: Path
    dataset: Optional[str] = None  # the name of the dataset the features come from (default: the file's stem)


class RecipeEntry(_Entry):
    """An encoder pretrained by riskdecomp itself on the dataset's train split (cached by recipe hash)."""

    source: Literal["recipe"]
    recipe: Recipe


ZooEntry = Annotated[
    Union[TimmEntry, TorchHubEntry, CheckpointEntry, FeaturesEntry, RecipeEntry], Field(discriminator="source")
]
_ENTRY = TypeAdapter(ZooEntry)
SOURCES = ("timm", "torch_hub", "checkpoint", "features", "recipe")
_SOURCE_CLASSES = {"timm": TimmEntry, "torch_hub": TorchHubEntry, "checkpoint": CheckpointEntry,
                   "features": FeaturesEntry, "recipe": RecipeEntry}


class Zoo:
    """An ordered collection of validated zoo entries (iterable, indexable by name)."""

    def __init__(self, entries: list, path: Optional[Path] = None):
        self.entries = list(entries)
        self.path = path
        self._by_name = {e.name: e for e in self.entries}

    def __iter__(self):
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, name: str):
        try:
            return self._by_name[name]
        except KeyError:
            raise ZooError(f"{self.path or 'zoo'}: unknown model {name!r}") from None

    @property
    def names(self) -> list:
        return [e.name for e in self.entries]

    def select(self, names) -> "Zoo":
        """The sub-zoo of ``names`` (plus the references they need), in zoo order."""
        if not names:
            return self
        wanted = set()
        for n in names:
            e = self[n]
            wanted.add(n)
            if e.reference:
                wanted.add(e.reference)
        return Zoo([e for e in self.entries if e.name in wanted], self.path)

    def to_frame(self):
        """One row per entry: name, source, representation, reference, the source's key field, metadata."""
        import pandas as pd

        rows = []
        for e in self.entries:
            what = {"timm": "model", "torch_hub": "entrypoint", "checkpoint": "architecture",
                    "features": "path", "recipe": "recipe"}[e.source]
            val = getattr(e, what)
            if e.source == "recipe":
                val = f"{val.objective}/{val.backbone}"
            rows.append({"name": e.name, "source": e.source, "what": str(val), "representation": e.representation,
                         "reference": e.reference or "", **e.metadata})
        return pd.DataFrame(rows).convert_dtypes()


def _merge(defaults: dict, entry: dict) -> dict:
    """Entry fields win; a default applies only to entries whose source has that field."""
    cls = _SOURCE_CLASSES.get(entry.get("source"))
    if cls is not None:
        defaults = {k: v for k, v in defaults.items() if k in cls.model_fields}
    out = {**defaults, **entry}
    if isinstance(defaults.get("metadata"), dict) and isinstance(entry.get("metadata"), dict):
        out["metadata"] = {**defaults["metadata"], **entry["metadata"]}
    return out


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # drop the discriminator tag pydantic inserts (e.g. 'timm') from the location
    if loc and loc[0] in SOURCES:
        loc = loc[1:]
    field = ".".join(loc) or "entry"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        src = first["input"].get("source") if isinstance(first["input"], dict) else first["input"]
        msg = f"unknown source {src!r} (expected one of {', '.join(SOURCES)})"
        field = "source"
    elif first["type"] == "union_tag_not_found":
        field, msg = "source", f"missing (expected one of {', '.join(SOURCES)})"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field"
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"field {field!r}: {msg}{extra}"


def parse_zoo(data: Any, path: Optional[Path] = None) -> Zoo:
    """Validate an already-parsed zoo mapping (``path`` resolves relative paths and names the file in errors)."""
    where = str(path) if path else "zoo"
    base = path.parent if path else Path.cwd()
    if not isinstance(data, dict) or "models" not in data:
        raise ZooError(f"{where}: expected a mapping with a 'models:' list")
    unknown = sorted(set(data) - {"models", "defaults"})
    if unknown:
        raise ZooError(f"{where}: unknown top-level key(s) {', '.join(map(repr, unknown))} (expected models, defaults)")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict):
        raise ZooError(f"{where}: 'defaults' must be a mapping")
    models = data["models"]
    if not isinstance(models, list) or not models:
        raise ZooError(f"{where}: 'models' must be a non-empty list")
    from .seeds import expand_seeds

    models, defaults = expand_seeds(models, defaults, where)  # `seeds: [0, 1, 2]` -> one entry per seed
    entries, seen = [], set()
    for i, raw in enumerate(models):
        label = f"models[{i}]"
        if not isinstance(raw, dict):
            raise ZooError(f"{where}: {label}: expected a mapping, got {type(raw).__name__}")
        if "name" in raw:
            label += f" ({raw['name']!r})"
        try:
            entry = _ENTRY.validate_python(_merge(defaults, raw))
        except ValidationError as err:
            raise ZooError(f"{where}: {label}: {_describe(err)}") from None
        if entry.name in seen:
            raise ZooError(f"{where}: {label}: field 'name': duplicate name {entry.name!r}")
        seen.add(entry.name)
        updates = {}
        for fld in ("weights", "path"):
            p = getattr(entry, fld, None)
            if p is not None and not p.is_absolute():
                updates[fld] = (base / p).resolve()
        entries.append(entry.model_copy(update=updates) if updates else entry)
    by_name = {e.name: e for e in entries}
    for i, e in enumerate(entries):
        if e.reference is not None and e.reference not in by_name:
            raise ZooError(f"{where}: models[{i}] ({e.name!r}): field 'reference': unknown model {e.reference!r}")
        if e.reference == e.name:
            raise ZooError(f"{where}: models[{i}] ({e.name!r}): field 'reference': an entry cannot be its own reference")
    return Zoo(entries, path)


def load_zoo(path) -> Zoo:
    """Read and validate a zoo YAML file (``yaml.safe_load`` only)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ZooError(f"{path}: zoo file not found") from None
    except OSError as exc:
        raise ZooError(f"{path}: cannot read zoo file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ZooError(f"{path}: malformed YAML{at}: {problem}") from None
    return parse_zoo(data, path)
