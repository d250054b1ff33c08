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

import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, ValidationInfo,
                      field_validator)

from .errors import ZooError
from .names import name_problem
from .pretrain.recipe import Recipe, check_arch

# torch.hub repositories: 'owner/name' or 'owner/name:ref' (torch.hub names its cache folder after them)
REPO_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_-][A-Za-z0-9_.-]*(:[A-Za-z0-9_-][A-Za-z0-9_./-]*)?$")
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


class TimmEntry(_Entry):
    """A timm architecture; weights from the hub (``pretrained: true``), a local file (``weights``), or a random
    initialization, which must be asked for (``pretrained: false``): an entry with neither is an error, since
    evaluating random weights by accident (``vit_small_patch16_224.dino`` without ``pretrained``) looks like a
    result."""

    source: Literal["timm"]
    model: str
    weights: Optional[Path] = None
    pretrained: Optional[bool] = Field(None, validate_default=True)
    strict: bool = True  # false: a weights file may miss / add tensors (listed in the run record); see encoders
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # input side in px (default: the model's own)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("pretrained")
    @classmethod
    def _weights_chosen(cls, v: Optional[bool], info: ValidationInfo) -> Optional[bool]:
        weights = info.data.get("weights")
        if weights is None and v is None and "weights" in info.data:
            raise ValueError("missing: write pretrained: true (the hub's weights) or pretrained: false (a random "
                             "initialization), or give weights: FILE")
        if weights is not None and v is False:
            raise ValueError("pretrained: false contradicts weights: FILE (drop one)")
        return v

    @field_validator("strict")
    @classmethod
    def _strict_needs_file(cls, v: bool, info: ValidationInfo) -> bool:
        if not v and info.data.get("weights") is None:
            raise ValueError("strict: false applies to a weights: FILE only (hub weights always load strictly)")
        return v

    @field_validator("model")
    @classmethod
    def _safe_model(cls, v: str) -> str:
        return check_arch(v, "model")


class TorchHubEntry(_Entry):
    """A torch.hub entry point; runs the repository's code, so it needs an explicit ``trust_repo: true``."""

    source: Literal["torch_hub"]
    repo: str
    entrypoint: str
    trust_repo: bool = Field(False, validate_default=True)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("repo")
    @classmethod
    def _safe_repo(cls, v: str) -> str:
        if not REPO_RE.match(v) or ".." in v.split(":")[0]:
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


class CheckpointEntry(_Entry):
    """An architecture (timm name or one of riskdecomp's backbones) + a local ``.safetensors`` / ``.pt`` file."""

    source: Literal["checkpoint"]
    architecture: str
    weights: Path
    strict: bool = True  # false: the file may miss / add tensors (listed in the run record); see encoders
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # input side in px (default: the model's / sidecar's)
    model_kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("architecture")
    @classmethod
    def _safe_architecture(cls, v: str) -> str:
        return check_arch(v)

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

    @field_validator("dataset")
    @classmethod
    def _safe_dataset(cls, v: Optional[str]) -> Optional[str]:
        problem = None if v is None else name_problem(v)
        if problem:
            raise ValueError(f"dataset {problem}")
        return v


class RecipeEntry(_Entry):
    """An encoder pretrained by riskdecomp itself on the dataset's train split (cached by recipe hash)."""

    source: Literal["recipe"]
    recipe: Recipe
    image_size: Optional[int] = Field(None, ge=8, le=4096)  # evaluation input side (default: recipe.image_size)


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
        """One row per entry: name, source, the source's key field (``what``), ``weights`` (see :func:`weights_label`),
        representation, reference, metadata."""
        import pandas as pd

        rows = []
        for e in self.entries:
            what = {"timm": "model", "torch_hub": "entrypoint", "checkpoint": "architecture",
                    "features": "path", "recipe": "recipe"}[e.source]
            val = getattr(e, what)
            if e.source == "recipe":
                val = f"{val.objective}/{val.backbone}"
            rows.append({"name": e.name, "source": e.source, "what": str(val), "weights": weights_label(e),
                         "representation": e.representation, "reference": e.reference or "", **e.metadata})
        return pd.DataFrame(rows).convert_dtypes()


def file_sha256(path, chunk: int = 1 << 22) -> str:
    """SHA-256 (hex) of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def weights_label(entry) -> str:
    """Where an entry's weights come from, in a few characters: ``hub`` (downloaded by timm / torch.hub),
    ``file:<sha256[:12]>`` (a local file; ``file:missing`` when absent), ``random`` (a random initialization:
    ``pretrained: false`` or a recipe with ``objective: init``), ``recipe`` (pretrained by riskdecomp), ``none``
    (precomputed features)."""
    weights = getattr(entry, "weights", None)
    if weights is not None:
        return "file:" + file_sha256(weights)[:12] if Path(weights).is_file() else "file:missing"
    if entry.source == "timm":
        return "hub" if entry.pretrained else "random"
    if entry.source == "recipe":
        return "random" if entry.recipe.objective == "init" else "recipe"
    return {"torch_hub": "hub", "features": "none"}[entry.source]


def format_table(df, width: int = 120, max_cell: int = 40) -> str:
    """A plain-text table of ``df`` no wider than ``width``: cells cut to ``max_cell`` characters (ending in '~'),
    the leading columns that fit (the rest are dropped and named in a last line; ``--format csv`` has them all)."""
    cells = df.astype(object).where(df.notna(), "").astype(str)
    cells = cells.apply(lambda col: col.map(lambda v: v if len(v) <= max_cell else v[:max_cell - 1] + "~"))
    shown, used = [], 0
    for c in cells.columns:
        w = max([len(str(c))] + [len(v) for v in cells[c]])
        if used + w + (2 if shown else 0) > width:
            break
        shown.append((c, w))
        used += w + (2 if len(shown) > 1 else 0)
    lines = ["  ".join(str(c).ljust(w) for c, w in shown).rstrip()]
    for i in range(len(cells)):
        lines.append("  ".join(cells[c].iloc[i].ljust(w) for c, w in shown).rstrip())
    hidden = [c for c in cells.columns if c not in dict(shown)]
    if hidden:
        more = f"({len(hidden)} more column(s): {', '.join(map(str, hidden))})"
        lines.append(more if len(more) <= width else more[:width - 4] + "...)")
    return "\n".join(lines)


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


MAX_YAML_NODES = 200_000  # expanded size cap: a zoo of 1,000 entries x 100 fields is far below it


def _expanded_size(root, where: str) -> int:
    """Number of nodes of the YAML graph once every alias is expanded (shared nodes counted per use), computed in
    linear time on the un-expanded graph. Raises ZooError above MAX_YAML_NODES ('billion laughs') or on an alias
    that contains itself."""
    sizes: dict = {}
    active: set = set()

    def size(node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ZooError(f"{where}: malformed YAML: a recursive alias (an anchor used inside itself)")
        active.add(key)
        if isinstance(node, yaml.MappingNode):
            n = 1 + sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n = 1 + sum(size(v) for v in node.value)
        else:
            n = 1
        active.discard(key)
        if n > MAX_YAML_NODES:
            raise ZooError(f"{where}: YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                           "(an alias bomb?); real zoo files are far smaller")
        sizes[key] = n
        return n

    return size(root)


def _read_text(path: Path) -> str:
    """The zoo file as text: UTF-8 (a BOM is allowed), anything else is a one-line error naming the file."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ZooError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ZooError(f"{path}: is a folder, not a YAML file") from None
    except OSError as exc:
        raise ZooError(f"{path}: cannot read file ({exc.strerror})") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ZooError(f"{path}: file is UTF-16; save it as UTF-8")
    if b"\x00" in raw:
        raise ZooError(f"{path}: file is binary (NUL bytes), not YAML text")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ZooError(f"{path}: file is not UTF-8 (byte 0x{raw[exc.start]:02x} at line {line}); "
                       "save it as UTF-8") from None


def load_yaml(text: str, where: str):
    """``yaml.safe_load`` (no tags executed) with the alias-expansion cap of :func:`_expanded_size`."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, where)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ZooError(f"{where}: malformed YAML{at}: {problem}") from None
    finally:
        loader.dispose()


def read_yaml(path):
    """A YAML file (zoo, recipe) parsed safely: UTF-8 only, no tags executed, alias expansion capped; every problem
    is a one-line ZooError naming the file."""
    return load_yaml(_read_text(Path(path)), str(path))


def load_zoo(path) -> Zoo:
    """Read and validate a zoo YAML file (see :func:`read_yaml`)."""
    return parse_zoo(read_yaml(path), Path(path))
