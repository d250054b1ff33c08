"""The zoo registry: a YAML file listing encoders, validated into typed entries.

File shape::

    defaults:          # optional: deep-merged into every entry (the entry wins); base: NAME, sweep: see zoo_expand
      metadata: {pretraining_data: digits}
      seeds: [0, 1, 2]  # optional (recipe entries): one entry per pretraining seed, named <name>.s<seed>
                        # (riskdecomp.zoo.seeds); the leaderboard pools them into one row per model
    models:
      - name: dino_vits16                   # unique, [a-z0-9_.-]+, not starting with '.'
        source: timm                        # a registered source: see riskdecomp.sources
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

from pathlib import Path
from typing import Annotated, Any, Optional, Union

import yaml
from pydantic import Field, TypeAdapter, ValidationError

from riskdecomp import sources
from riskdecomp.pretrain.recipe import Recipe

# the entry models live with their sources (riskdecomp.sources); re-exported here, where users look for them
from riskdecomp.sources.base import METADATA_FIELDS, REPRESENTATIONS, file_sha256  # noqa: F401
from riskdecomp.sources.checkpoint import CheckpointEntry  # noqa: F401
from riskdecomp.sources.features import FeaturesEntry  # noqa: F401
from riskdecomp.sources.recipe import RecipeEntry  # noqa: F401
from riskdecomp.sources.timm import TimmEntry  # noqa: F401
from riskdecomp.sources.torch_hub import TorchHubEntry  # noqa: F401
from riskdecomp.utils.errors import ZooError
from riskdecomp.utils.names import split_seed
from riskdecomp.zoo.expand import expand
from riskdecomp.zoo.seeds import expand_seeds

ZooEntry = Annotated[Union[tuple(sources.entry_classes().values())], Field(discriminator="source")]
_ENTRY = TypeAdapter(ZooEntry)


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

    def expanded(self) -> dict:
        """The explicit form of the zoo: ``{'models': [...]}``, one mapping per final entry (after defaults, bases,
        sweeps), recipes in full (every field), other fields only where they differ from the default, metadata
        including what the recipe determines. Loading it back gives the same entries."""
        models = []
        for e in self.entries:
            d = {"name": e.name, "source": e.source, **e.model_dump(mode="json", exclude_defaults=True)}
            for fld in sources.source_of(e).full_fields:
                d[fld] = getattr(e, fld).model_dump(mode="json")
            d["metadata"] = d.pop("metadata", {})
            models.append(d)
        return {"models": models}

    def to_frame(self):
        """One row per entry: name, source, the source's key field (``what``), ``weights`` (see :func:`weights_label`),
        representation, reference, metadata."""
        import pandas as pd

        rows = []
        for e in self.entries:
            src = sources.source_of(e)
            rows.append({"name": e.name, "source": e.source, "what": src.what(e), "weights": src.weights_label(e),
                         "representation": e.representation, "reference": e.reference or "", **e.metadata})
        return pd.DataFrame(rows).convert_dtypes()


def weights_label(entry) -> str:
    """Where an entry's weights come from, in a few characters (see :meth:`riskdecomp.sources.Source.weights_label`):
    ``hub``, ``file:<sha256[:12]>`` (``file:missing``), ``random``, ``recipe``, ``none``."""
    return sources.source_of(entry).weights_label(entry)


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


def describe_entry(err: ValidationError) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    # drop the discriminator tag pydantic inserts (e.g. 'timm') from the location
    if loc and loc[0] in sources.names():
        loc = loc[1:]
    field = ".".join(loc) or "entry"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "union_tag_invalid":
        src = first["input"].get("source") if isinstance(first["input"], dict) else first["input"]
        msg = f"unknown source {src!r} (expected one of {', '.join(sources.names())})"
        field = "source"
    elif first["type"] == "union_tag_not_found":
        field, msg = "source", f"missing (expected one of {', '.join(sources.names())})"
    elif first["type"] == "extra_forbidden":
        msg = "unknown field"
    extra = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"field {field!r}: {msg}{extra}"


def parse_zoo(data: Any, path: Optional[Path] = None, base: Optional[Path] = None) -> Zoo:
    """Validate an already-parsed zoo mapping (``path`` names the file in errors; relative paths are resolved
    against ``base``, default: ``path``'s folder, else the working directory)."""
    where = str(path) if path else "zoo"
    base = base if base is not None else path.parent if path else Path.cwd()
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

    default_seeds = {"seeds": defaults["seeds"]} if "seeds" in defaults else {}
    shaped = expand(models, {k: v for k, v in defaults.items() if k != "seeds"}, where, sources.entry_classes(),
                    Recipe)
    label_of = {e.get("name"): label for label, e in shaped}
    # `seeds: [0, 1, 2]` (an entry's, or defaults') -> one entry per seed, <name>.s<seed>
    seeded, _ = expand_seeds([e for _, e in shaped], default_seeds, where, labels=[lbl for lbl, _ in shaped])
    entries, labels, seen = [], [], set()
    for raw in seeded:
        model, seed = split_seed(raw.get("name"))
        label = label_of.get(raw.get("name")) or f"{label_of.get(model, 'models')} seed {seed}"
        try:
            entry = _ENTRY.validate_python(raw)
        except ValidationError as err:
            raise ZooError(f"{where}: {label}: {describe_entry(err)}") from None
        src = sources.source_of(entry)
        try:
            entry = src.complete(entry)
        except ValueError as exc:
            raise ZooError(f"{where}: {label}: {exc}") from None
        if entry.name in seen:
            raise ZooError(f"{where}: {label}: field 'name': duplicate name {entry.name!r}")
        seen.add(entry.name)
        updates = {}
        for fld in src.files:
            p = getattr(entry, fld, None)
            if p is not None and not p.is_absolute():
                updates[fld] = (base / p).resolve()
        entries.append(entry.model_copy(update=updates) if updates else entry)
        labels.append(label)
    by_name = {e.name: e for e in entries}
    for label, e in zip(labels, entries):
        if e.reference is not None and e.reference not in by_name:
            raise ZooError(f"{where}: {label}: field 'reference': unknown model {e.reference!r}")
        if e.reference == e.name:
            raise ZooError(f"{where}: {label}: field 'reference': an entry cannot be its own reference")
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
    """Read and validate a zoo YAML file (see :func:`read_yaml`), once: the runner hands the entries to its jobs, so
    the file may be a pipe (``--zoo /dev/stdin``, ``<(...)``). Relative paths are resolved against the file's folder,
    or the working directory for a stream (not a regular file, or a file under /dev or /proc)."""
    path = Path(path)
    stream = not path.is_file() or path.absolute().parts[1:2] in (("dev",), ("proc",))
    return parse_zoo(read_yaml(path), path, base=Path.cwd() if stream else None)
