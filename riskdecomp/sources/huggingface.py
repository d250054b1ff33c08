"""``source: huggingface``: a Hugging Face ``transformers`` vision model (``AutoModel``), from the hub (``model:
org/name``, pinned with ``revision:``) or a local folder written by ``save_pretrained`` (``path:``, holding
``config.json``, ``model.safetensors`` and ``preprocessor_config.json``).

Needs ``pip install "riskdecomp[huggingface]"`` (transformers). Safe by construction: weights are read from
safetensors only (``use_safetensors=True``: a folder or repository with only ``pytorch_model.bin`` is refused, never
unpickled) and the repository's own code never runs (``trust_remote_code=False``). Loading is strict like every
other source: a model tensor missing from the file (e.g. a ``pooler`` the checkpoint never trained, which
transformers would silently initialize at random) is an error when the representation uses it; ``strict: false``
tolerates it and lists it in the run record. Preprocessing follows the model's ``preprocessor_config.json`` (resize, center crop, normalization).

Representations: ``pooled`` (the model's ``pooler_output``), ``cls`` (first token of ``last_hidden_state``),
``avg`` (mean of the patch tokens, after the class and register tokens), ``cls+avg``; ``4xcls`` is timm-only.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import field_validator, model_validator
from torch import nn

from riskdecomp.sources.base import Built, SeededEntry, Source, file_sha256, register
from riskdecomp.utils.errors import RiskdecompError, WeightsError

HUB_ID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*/[A-Za-z0-9_-][A-Za-z0-9_.-]*$")
REVISION_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class HuggingFaceEntry(SeededEntry):
    """A transformers model: ``model: org/name`` (hub) or ``path: FOLDER`` (local), exactly one."""

    source: Literal["huggingface"]
    model: Optional[str] = None
    path: Optional[Path] = None
    revision: Optional[str] = None  # hub only: a tag, branch or commit (default: main)
    strict: bool = True

    @field_validator("model")
    @classmethod
    def _safe_model(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not HUB_ID_RE.fullmatch(v) or ".." in v):
            raise ValueError(f"model {v!r}: expected a hub repository id 'org/name' (a local folder goes in path:)")
        return v

    @field_validator("revision")
    @classmethod
    def _safe_revision(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and (not REVISION_RE.fullmatch(v) or ".." in v):
            raise ValueError(f"revision {v!r}: expected a tag, branch or commit hash")
        return v

    @field_validator("representation")
    @classmethod
    def _supported(cls, v: str) -> str:
        if v == "4xcls":
            raise ValueError("representation '4xcls' is available for timm models only (use cls, avg, cls+avg, pooled)")
        return v

    @model_validator(mode="after")
    def _one_place(self):
        if (self.model is None) == (self.path is None):
            raise ValueError("give either model: org/name (the hub) or path: FOLDER (save_pretrained), not "
                             f"{'both' if self.model else 'neither'}")
        if self.revision is not None and self.model is None:
            raise ValueError("revision applies to a hub model: only")
        return self


def _transformers(who: str):
    try:
        import transformers
    except ImportError:
        raise RiskdecompError(f"{who}: source huggingface needs transformers: "
                              'pip install "riskdecomp[huggingface]"') from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def folder_files(folder: Path) -> list:
    """The files of a model folder that identify it: every regular file under it (relative POSIX paths, sorted)
    but documentation (``*.md``) and hidden ones (``.gitattributes``, the ``.cache/`` of a hub download). transformers
    reads more than the weights, config and ``preprocessor_config.json`` -- ``processor_config.json`` (its nested
    ``image_processor`` first), ``model.safetensors.index.json`` and the shards it names, ``generation_config.json``,
    an ``adapter_config.json`` (peft) -- and which ones changes with its version, so the rule is by exclusion: a file
    no loader reads costs only its hashing, a file one reads and the key missed would change the features under the
    same key."""
    out = []
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.suffix.lower() != ".md":
            out.append(rel.as_posix())
    return out


def folder_sha256(folder: Path, who: str) -> str:
    """One SHA-256 over the files of a ``save_pretrained`` folder (:func:`folder_files`: what the loader may read,
    each by name and content)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{who}: model folder {folder} not found")
    names = folder_files(folder)
    if not any(n.endswith(".safetensors") for n in names):
        pickled = sorted(p.name for p in folder.glob("*.bin"))
        extra = f" (refusing {pickled[0]}: pickled weights are never loaded)" if pickled else ""
        raise WeightsError(f"{who}: {folder} holds no .safetensors weights{extra}")
    blob = json.dumps({n: file_sha256(folder / n) for n in names}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class HFRepresentation(nn.Module):
    """forward(pixels) -> the entry's representation of a transformers model's output."""

    def __init__(self, model, kind: str, n_prefix: int, who: str):
        super().__init__()
        self.model, self.kind, self.n_prefix, self.who = model, kind, n_prefix, who

    def forward(self, x):
        out = self.model(pixel_values=x)
        if self.kind == "pooled":
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                raise RiskdecompError(f"{self.who}: this model has no pooler_output: use representation cls or avg")
            return pooled.reshape(len(pooled), -1)
        tokens = out.last_hidden_state
        if tokens.ndim != 3:
            raise RiskdecompError(f"{self.who}: representation {self.kind!r} needs a transformer's tokens "
                                  f"(this model outputs a {tokens.ndim}-d feature map): use pooled")
        if self.kind == "cls":
            return tokens[:, 0]
        avg = tokens[:, self.n_prefix:].mean(dim=1)
        return avg if self.kind == "avg" else torch.cat([tokens[:, 0], avg], dim=-1)


def _transform(processor, who: str):
    """The processor's resize / center crop / normalization as a torchvision transform (fast, picklable)."""
    from torchvision import transforms as T

    def get(d, k):
        return getattr(d, k, None) if not isinstance(d, dict) else d.get(k)

    if getattr(processor, "do_rescale", True) and abs(getattr(processor, "rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise RiskdecompError(f"{who}: preprocessing rescale_factor {processor.rescale_factor} is not supported")
    modes = {0: T.InterpolationMode.NEAREST, 1: T.InterpolationMode.LANCZOS, 2: T.InterpolationMode.BILINEAR,
             3: T.InterpolationMode.BICUBIC}
    interp = modes.get(int(getattr(processor, "resample", 2) or 2), T.InterpolationMode.BILINEAR)
    steps, side = [], None
    size = getattr(processor, "size", None)
    if getattr(processor, "do_resize", True) and size is not None:
        if get(size, "shortest_edge"):
            side = int(get(size, "shortest_edge"))
            steps.append(T.Resize(side, interpolation=interp))
        elif get(size, "height") and get(size, "width"):
            side = (int(get(size, "height")), int(get(size, "width")))
            steps.append(T.Resize(side, interpolation=interp))
            side = side[0]
        else:
            raise RiskdecompError(f"{who}: preprocessing size {size} is not supported")
    crop = getattr(processor, "crop_size", None)
    if getattr(processor, "do_center_crop", False) and crop is not None:
        steps.append(T.CenterCrop((int(get(crop, "height")), int(get(crop, "width")))))
        side = int(get(crop, "height"))
    steps.append(T.ToTensor())
    if getattr(processor, "do_normalize", True):
        steps.append(T.Normalize(list(processor.image_mean), list(processor.image_std)))
    transform = T.Compose(steps)
    transform.input_size = side
    return transform


@register
class HuggingFace(Source):
    name = "huggingface"
    entry = HuggingFaceEntry
    files = ("path",)

    def what(self, entry) -> str:
        return entry.model or str(entry.path)

    def weights_label(self, entry) -> str:
        if entry.path is None:
            return "hub"
        try:
            return "file:" + folder_sha256(entry.path, "")[:12]
        except WeightsError:
            return "file:missing"

    def weights_sha256(self, entry, dataset, **_) -> Optional[str]:
        return None if entry.path is None else folder_sha256(entry.path, f"model {entry.name!r}")

    def build(self, entry, dataset, **_) -> Built:
        who = f"model {entry.name!r}"
        tf = _transformers(who)
        where = str(entry.path) if entry.path is not None else entry.model
        sha = self.weights_sha256(entry, dataset)
        kw = {"revision": entry.revision} if entry.revision else {}
        try:
            model, info = tf.AutoModel.from_pretrained(where, use_safetensors=True, trust_remote_code=False,
                                                       output_loading_info=True, **kw)
            processor = tf.AutoImageProcessor.from_pretrained(where, trust_remote_code=False, **kw)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightsError(f"{who}: cannot load {where} with transformers ({first})") from None
        missing, unexpected = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
        shapes = list(info.get("mismatched_keys", []))
        if shapes:
            raise WeightsError(f"{who}: weights {where} do not fit the model (shape mismatch: {shapes[0]})")
        # a pooler only makes `pooled` (transformers builds one that e.g. DINO's ViT checkpoints lack): missing,
        # it changes no other representation
        needed = [k for k in missing if entry.representation == "pooled" or not k.startswith("pooler.")]
        if entry.strict and (needed or unexpected):
            parts = ([f"missing {', '.join(sorted(needed)[:3])}"] if needed else []) + (
                [f"unexpected {', '.join(sorted(unexpected)[:3])}"] if unexpected else [])
            raise WeightsError(f"{who}: weights {where} do not fit the model ({'; '.join(parts)}: those tensors "
                               "would stay at their random initialization); set strict: false to load anyway")
        n_prefix = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        module = HFRepresentation(model.eval(), entry.representation, n_prefix, who)
        return Built(module, _transform(processor, who), {"missing": sorted(missing), "unexpected": sorted(unexpected)},
                     sha)

    def random_init(self, entry) -> bool:
        return not entry.strict  # transformers initializes the tensors the file lacks

    def identity(self, entry, dataset, sha) -> str:
        transformers = _transformers(f"model {entry.name!r}")
        where = f"file:{sha}" if sha else f"hub:{entry.model}@{entry.revision or 'main'}"
        return f"hf|{where}|{entry.representation}|transformers{transformers.__version__}"
