"""Model files: tensors, not code.

A cupre model file is a safetensors file (``model.safetensors``): the detector's state
dict, and in its metadata, as JSON, the detector config, the categories and the
training facts (stage, iteration ...), plus a SHA-256 digest of the tensors. Loading
never executes anything from the file: safetensors checks the header and the byte
ranges, the digest catches altered tensor bytes, and the tensors are checked against
the config before they reach the model. Every problem is one line naming the file.
Building a detector from such a file is :func:`cupre.models.loading.build_from_file`;
this module knows tensors, metadata and digests only.

Files of cupre < 0.2 were pickles (``model.pt``); pickles can run code when loaded, so
they are refused. :func:`convert_legacy` turns one into a model file: it reads it with
``torch.load(weights_only=True)``, which rebuilds tensors and plain types only, and
falls back to a full unpickling only when the caller says the file is trusted.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

from cupre.config import DetectorConfig
from cupre.devices import file_mappings, forget_file_pages
from cupre.errors import CupreError, file_error
from cupre.fileio import atomic_path

MODEL_FILE = "model.safetensors"
# Where a `cupre train` run folder keeps its model (cupre.experiments.workflow): the
# self-trained one when self-training ran, else the fine-tuned one.
TRAIN_RUN_MODELS = ("finetune/selftrain", "finetune")
FORMAT = "cupre-detector/1"
LEGACY_DETECTOR_KEYS = ("min_size", "max_size")  # resize settings before the object-scale rule


def tensor_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        _digest_update(h, name, state[name])
    return h.hexdigest()


def _digest_update(h, name: str, tensor: torch.Tensor) -> None:
    t = tensor.detach().cpu().contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def write_model_file(path: str | Path, model: torch.nn.Module | dict[str, torch.Tensor], cfg: DetectorConfig,
                     categories: list[dict], **facts: Any) -> Path:
    """Write the model file atomically (tensors moved to the CPU, made contiguous)."""
    source = model.state_dict() if isinstance(model, torch.nn.Module) else model
    state = {k: v.detach().cpu().contiguous() for k, v in source.items()}
    metadata = {"format": FORMAT, "detector": json.dumps(cfg.to_dict()), "categories": json.dumps(categories),
                "facts": json.dumps(facts, default=str), "digest": tensor_digest(state)}
    with atomic_path(path) as tmp:
        tmp.write_bytes(st_save(state, metadata=metadata))
    return Path(path)


def half_storage(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its fp32 tensors stored as fp16 (half the file; read back as fp32
    by :func:`load_model_file`)."""
    return {k: v.half() if v.dtype == torch.float32 else v for k, v in state.items()}


def is_pickle(path: Path) -> bool:
    """Whether ``path`` (not a safetensors file) looks like a torch pickle: a zip archive,
    or a raw pickle (protocol 2-5 opcode)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and 2 <= head[1] <= 5)


def load_model_file(path: str | Path, *, weights_dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Read and check a model file.

    Args:
        weights_dtype: None: the tensors are views of the file (mapped, read as used),
            except fp16 ones (a file stored at half size: :func:`half_storage`), which
            are converted to fp32: fp16 is how a model is stored, never how it computes.
            A dtype: tensors of two or more dimensions (the weights of convolutions and
            linear layers) are converted to it and the others copied, one at a time, each
            view's pages dropped once read; so loading never holds the whole file
            beside the converted copy (for bf16 inference).

    Returns:
        ``{"model": state dict, "detector": config dict, "categories": [...], **facts}``.

    Raises:
        CupreError: one line naming ``path``: missing, a legacy pickle, not a
            safetensors file, not a cupre model, altered tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: model file not found")
    digest = hashlib.sha256()
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            state, mappings = {}, None
            for name in sorted(fh.keys()):
                view = fh.get_tensor(name)
                _digest_update(digest, name, view)
                if weights_dtype is None:
                    state[name] = view.float() if view.dtype == torch.float16 else view  # fp16: storage only
                    continue
                state[name] = (view.to(weights_dtype, copy=True) if view.ndim >= 2
                               else view.float() if view.dtype == torch.float16 else view.clone())
                mappings = file_mappings(path) if mappings is None else mappings
                forget_file_pages(view, mappings)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        if is_pickle(path):
            raise CupreError(f"{path}: a pickled model file from cupre < 0.2; pickles can run code when loaded, "
                             f"so cupre does not read them. To convert one: cupre convert-model {path}") from None
        raise CupreError(f"{path}: not a readable model file ({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CupreError(f"{path}: not a cupre model file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    if digest.hexdigest() != metadata.get("digest"):
        raise CupreError(f"{path}: the tensors do not match the digest stored with them (altered or damaged file)")
    detector, categories, facts = (metadata_json(path, metadata, key) for key in ("detector", "categories", "facts"))
    check_metadata(path, detector, categories, facts)
    for key in LEGACY_DETECTOR_KEYS:
        detector.pop(key, None)
    DetectorConfig.from_dict(detector, where=f"{path} (detector config)")  # types and bounds, as in a config
    return {"model": state, "detector": detector, "categories": categories, **facts}


def metadata_json(path: Path, metadata: dict[str, str], key: str) -> Any:
    """One JSON entry of a model file's metadata (``facts`` may be absent)."""
    if key not in metadata and key != "facts":
        raise CupreError(f"{path}: damaged model metadata (no {key!r} entry)")
    try:
        return json.loads(metadata.get(key, "{}"))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CupreError(f"{path}: damaged model metadata (its {key!r} entry is not JSON: {exc})") from None


def check_metadata(path: Path, detector: Any, categories: Any, facts: Any) -> None:
    """A model file's metadata is input like any other: each part of the shape cupre writes."""
    if not isinstance(detector, dict):
        raise CupreError(f"{path}: damaged model metadata (the detector config is a {type(detector).__name__}, "
                         "not a mapping)")
    if not isinstance(categories, list) or not all(
            isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name", ""), str)
            for c in categories):
        raise CupreError(f"{path}: damaged model metadata (categories must be a list of {{'id': int, 'name': str}})")
    if not isinstance(facts, dict) or set(facts) & {"model", "detector", "categories"}:
        raise CupreError(f"{path}: damaged model metadata (facts must be a mapping of other keys)")
    threshold = facts.get("score_threshold")
    if threshold is not None and not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
                                      and 0.0 <= threshold <= 1.0):
        raise CupreError(f"{path}: damaged model metadata (score_threshold must be a number in [0, 1], "
                         f"got {str(threshold)[:40]})")


def check_state(path: str | Path, model: torch.nn.Module, state: dict[str, torch.Tensor], *, prefix: str = "") -> None:
    """Raise one line when ``state`` does not fit ``model`` (missing, extra or misshapen tensors)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    problems = []
    for label, names in (("missing", missing), ("unexpected", extra), ("of another shape", shapes)):
        if names:
            problems.append(f"{len(names)} tensors {label} (e.g. {prefix}{names[0]})")
    if problems:
        raise CupreError(f"{path}: the tensors do not fit the detector its config describes: {'; '.join(problems)} "
                         "(wrong backbone or a damaged file?)")


def resolve_model_file(model: str | Path) -> Path:
    """A model file, or a run folder's: ``<folder>/model.safetensors`` (a ``cupre
    finetune`` run), else the model a ``cupre train`` run keeps (:data:`TRAIN_RUN_MODELS`)."""
    path = Path(model)
    if path.is_dir():
        for inside in (path / MODEL_FILE, *(path / sub / MODEL_FILE for sub in TRAIN_RUN_MODELS)):
            if inside.is_file():
                return inside
        raise file_error(path, f"run folder holds no {MODEL_FILE} (nor finetune/{MODEL_FILE}, as a cupre train "
                               "run folder would)")
    if not path.is_file():
        raise file_error(path, "model file not found")
    return path


def convert_legacy(old: str | Path, new: str | Path, *, trust: bool = False) -> Path:
    """Convert a pickled model file of cupre < 0.2 into a safetensors model file.

    The pickle is read with ``weights_only=True`` (tensors and plain types only); with
    ``trust`` a file that needs more is unpickled fully, which can run code in it.
    """
    old = Path(old)
    try:
        ckpt = torch.load(old, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds on such files
        if not trust:
            raise CupreError(f"{old}: cannot be read as plain tensors ({exc.__class__.__name__}); "
                             "pass --trust only if you made this file yourself") from None
        try:
            ckpt = torch.load(old, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - a zip or pickle that is not a torch file
            raise CupreError(f"{old}: not a torch model file ({exc.__class__.__name__}: "
                             f"{' '.join(str(exc).split())[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "cupre-detector" or not isinstance(ckpt.get("detector"), dict):
        raise CupreError(f"{old}: not a cupre model file (no detector weights in it)")
    detector = {k: v for k, v in ckpt["detector"].items() if k not in LEGACY_DETECTOR_KEYS}
    cfg = DetectorConfig.from_dict(detector, where=f"{old} (detector config)")
    facts = {k: v for k, v in ckpt.items() if k not in ("kind", "model", "detector", "categories")}
    return write_model_file(new, ckpt["model"], cfg, list(ckpt.get("categories") or []), converted_from=str(old),
                            **facts)
