"""Expansion of a zoo file's shorthand into plain entries: ``defaults:``, ``base:`` and ``sweep:``.

Decisions (README "The zoo file"):

- **Deep merge** (:func:`deep_merge`): mappings are merged key by key, recursively; the more specific side wins
  (the entry over its base, the entry over ``defaults``); lists and scalars are replaced whole; an explicit ``null``
  wins too. A top-level default applies only to entries whose source has that field.
- **base: NAME** extends another entry of the same file (any field but ``name``, ``sweep`` and ``sweep_mode``); the
  base may itself have a base. Bases are resolved on the written entries, before sweeps and defaults.
- **sweep: {KEY: VALUES}** adds controlled variants after the entry (which stays). ``VALUES`` is a non-empty list
  (variant ``<name>_<key><value>``, dots of the key as ``_``) or a mapping ``{label: value}`` (variant
  ``<name>_<label>``). A key is a dotted path: for recipe entries it is read inside ``recipe`` when its first part
  is a recipe field (``z_dim``, ``head.kind``, ``augment.crop``), otherwise inside the entry (``representation``,
  ``metadata.notes``). By default each variant changes one key (one design choice at a time);
  ``sweep_mode: grid`` gives the full product of all keys (names join the parts).
- **At most** :data:`MAX_ENTRIES` final entries in a zoo (written entries, sweep variants and pretraining seeds
  together), counted before any variant is made: a larger sweep is a one-line error, not a memory blow-up.
"""

from __future__ import annotations

import itertools
import math

from pydantic import BaseModel

from riskdecomp.utils.errors import ZooError

SWEEP_MODES = ("one_at_a_time", "grid")
MAX_ENTRIES = 10_000  # final entries of one zoo (each is a model to evaluate): far above any real study (169 models)
_NOT_INHERITED = ("name", "sweep", "sweep_mode", "base")


def deep_merge(low: dict, high: dict) -> dict:
    """``high`` over ``low``, mappings merged key by key recursively (a new dict; inputs untouched)."""
    out = dict(low)
    for k, v in high.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _label(i: int, raw: dict) -> str:
    return f"models[{i}]" + (f" ({raw['name']!r})" if "name" in raw else "")


def _resolve_bases(models: list, where: str) -> list:
    """Each raw entry with its ``base:`` chain merged in (the entry wins; ``name``/``sweep`` not inherited)."""
    index = {}
    for i, raw in enumerate(models):
        if isinstance(raw, dict) and isinstance(raw.get("name"), str):
            index.setdefault(raw["name"], i)
    resolved: dict = {}

    def resolve(i: int, chain: tuple) -> dict:
        if i in resolved:
            return resolved[i]
        raw = models[i]
        b = raw.get("base")
        if b is None:
            out = dict(raw)
        else:
            if not isinstance(b, str) or b not in index:
                raise ZooError(f"{where}: {_label(i, raw)}: field 'base': unknown model {b!r}")
            j = index[b]
            if j in chain or j == i:
                loop = " -> ".join([models[k]["name"] for k in chain + (i,)] + [b])
                raise ZooError(f"{where}: {_label(i, raw)}: field 'base': cycle {loop}")
            parent = {k: v for k, v in resolve(j, chain + (i,)).items() if k not in _NOT_INHERITED}
            out = deep_merge(parent, {k: v for k, v in raw.items() if k != "base"})
        resolved[i] = out
        return out

    out = []
    for i, raw in enumerate(models):
        if not isinstance(raw, dict):
            raise ZooError(f"{where}: models[{i}]: expected a mapping, got {type(raw).__name__}")
        out.append(resolve(i, ()))
    return out


def _path_in(key: str, entry_cls, recipe_cls) -> list:
    """The path (list of keys from the entry's root) a sweep key addresses; ValueError when no such field."""
    parts = key.split(".")
    if recipe_cls is not None and parts[0] in recipe_cls.model_fields:
        parts, cls = ["recipe"] + parts, entry_cls
    else:
        cls = entry_cls
    for depth, p in enumerate(parts):
        if cls is None:  # inside a free mapping (metadata, kwargs): checked when the entry is validated
            break
        if p not in cls.model_fields:
            raise ValueError(f"unknown field {'.'.join(parts[:depth + 1])!r}")
        ann = cls.model_fields[p].annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return parts


def _set(d: dict, path: list, value) -> dict:
    if len(path) == 1:
        return {**d, path[0]: value}
    inner = d.get(path[0])
    return {**d, path[0]: _set(inner if isinstance(inner, dict) else {}, path[1:], value)}


def _value_name(v) -> str:
    return str(v).lower() if isinstance(v, bool) or v is None else str(v)


def too_many(where: str, what: str, n: int) -> ZooError:
    """The one-line error for a zoo that would have ``n`` > :data:`MAX_ENTRIES` entries."""
    return ZooError(f"{where}: {what} would make {n:,} entries, more than the {MAX_ENTRIES:,} a zoo may have "
                    "(split the study into several zoo files, or sweep fewer values)")


def _expand_sweep(entry: dict, label: str, where: str, source_classes: dict, recipe_cls, room: int) -> list:
    """The entry and its sweep variants (plain entries, without ``sweep`` / ``sweep_mode``); at most ``room`` variants
    (counted before any is made)."""
    sweep = entry.get("sweep")
    mode = entry.get("sweep_mode", "one_at_a_time")
    base = {k: v for k, v in entry.items() if k not in ("sweep", "sweep_mode")}
    if sweep is None:
        if "sweep_mode" in entry:
            raise ZooError(f"{where}: {label}: field 'sweep_mode': given without a sweep")
        return [base]
    if mode not in SWEEP_MODES:
        raise ZooError(f"{where}: {label}: field 'sweep_mode': {mode!r} (expected one of {', '.join(SWEEP_MODES)})")
    if not isinstance(sweep, dict) or not sweep:
        raise ZooError(f"{where}: {label}: field 'sweep': expected a non-empty mapping {{field: [values]}}")
    name = entry.get("name")
    if not isinstance(name, str):
        raise ZooError(f"{where}: {label}: field 'sweep': a swept entry needs a name")
    cls = source_classes.get(entry.get("source"))
    if cls is None:
        raise ZooError(f"{where}: {label}: field 'sweep': needs a known source")
    axes = []
    for key, values in sweep.items():
        at = f"{where}: {label}: field 'sweep.{key}'"
        try:
            path = _path_in(str(key), cls, recipe_cls if "recipe" in cls.model_fields else None)
        except ValueError as exc:
            raise ZooError(f"{at}: {exc}") from None
        if path[0] in _NOT_INHERITED or path[0] == "source":
            raise ZooError(f"{at}: cannot sweep {path[0]!r}")
        if isinstance(values, list):
            if any(isinstance(v, (dict, list)) for v in values):
                raise ZooError(f"{at}: a mapping or list value needs a name: write {{label: value}} instead of a list")
            opts = [(f"{str(key).replace('.', '_')}{_value_name(v)}", v) for v in values]
        elif isinstance(values, dict):
            opts = [(str(lbl), v) for lbl, v in values.items()]
        else:
            raise ZooError(f"{at}: expected a list of values (or a mapping label: value), "
                           f"got {type(values).__name__}")
        if not opts:
            raise ZooError(f"{at}: empty list of values")
        axes.append([(lbl, path, v) for lbl, v in opts])
    n = math.prod(map(len, axes)) if mode == "grid" else sum(map(len, axes))
    if n > room:
        raise too_many(where, f"{label}: field 'sweep' ({mode}, {' x '.join(str(len(a)) for a in axes)} values)",
                       n + MAX_ENTRIES - room)
    combos = itertools.product(*axes) if mode == "grid" else ((opt,) for axis in axes for opt in axis)
    out = [base]
    for combo in combos:
        variant = dict(base, name="_".join([name] + [lbl for lbl, _, _ in combo]))
        for _, path, v in combo:
            variant = _set(variant, path, v)
        out.append(variant)
    return out


def _apply_defaults(defaults: dict, entry: dict, source_classes: dict) -> dict:
    """Deep merge of ``defaults`` under ``entry``; a default applies only to entries whose source has that field."""
    cls = source_classes.get(entry.get("source", defaults.get("source")))
    if cls is not None:
        defaults = {k: v for k, v in defaults.items() if k in cls.model_fields}
    return deep_merge(defaults, entry)


def expand(models: list, defaults: dict, where: str, source_classes: dict, recipe_cls) -> list:
    """``[(label, entry dict)]``: the final entries, before validation (``label`` names the written entry in
    errors). Raises ZooError (one line) for an unknown base, a cycle, a bad sweep, a name collision or more than
    :data:`MAX_ENTRIES` entries."""
    if len(models) > MAX_ENTRIES:
        raise too_many(where, "its models", len(models))
    out = []
    for i, entry in enumerate(_resolve_bases(models, where)):
        label = _label(i, models[i])
        room = MAX_ENTRIES - (len(out) + 1) - (len(models) - i - 1)  # the variants that still fit
        variants = _expand_sweep(_apply_defaults(defaults, entry, source_classes), label, where, source_classes,
                                 recipe_cls, room)
        out.append((label, variants[0]))
        out.extend((f"{label} sweep variant {v['name']!r}", v) for v in variants[1:])
    return out
