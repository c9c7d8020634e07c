"""Starting points real users have: torchvision's COCO Mask R-CNN and timm's ImageNet bodies.

torchvision's ``maskrcnn_resnet50_fpn`` (v1) is cupre's Mask R-CNN with ``norm: frozen_bn``
(:data:`TORCHVISION_COCO_DETECTOR`); only names differ (:func:`torchvision_to_cupre`):
``backbone.body.`` -> ``backbone.`` (timm's ResNet names its layers as torchvision's does;
a BatchNorm body's ``num_batches_tracked`` counters are dropped), ``backbone.fpn.`` ->
``neck.``, ``rpn.`` / ``roi_heads.`` -> ``head.rpn.`` / ``head.roi_heads.``. The published
COCO file predates torchvision 0.13 and has its old names (``rpn.head.conv``,
``mask_fcnK``, ``fpn.inner_blocks.K.weight``), renamed here as torchvision renames them.

Pixels: torchvision and timm standardise with ImageNet statistics, cupre with
``PIXEL_MEAN`` / ``PIXEL_STD``; :func:`refit_stem` folds the difference into the stem.
torchvision also resizes the shorter side to 800 px; cupre feeds native pixels (or the
object scale, :mod:`cupre.scale`). Weights are read as tensors only, from local files
unless ``download=True``.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlparse

import huggingface_hub.constants as hf_constants
import timm
import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.modelfile import check_state
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.backbone import build_backbone, norm_factory
from cupre.models.detector import CupreDetector, build_detector

COCO_WEIGHTS = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's GeneralizedRCNNTransform defaults
IMAGENET_STD = (0.229, 0.224, 0.225)

TORCHVISION_COCO_DETECTOR: dict = {
    "arch": "maskrcnn", "backbone": "resnet50", "norm": "frozen_bn",
    "num_classes": 90,  # COCO's 91 logits include the background
    "fpn_channels": 256, "object_size": None,
    "anchor_sizes": (32, 64, 128, 256, 512), "aspect_ratios": (0.5, 1.0, 2.0),
    "rpn_pre_nms_top_n_train": 2000, "rpn_post_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000, "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256, "box_batch_size_per_image": 512,
    "box_score_thresh": 0.05, "box_nms_thresh": 0.5, "detections_per_img": 100, "mask_threshold": 0.5,
}

PREFIXES = (("backbone.body.", "backbone."), ("backbone.fpn.", "neck."),
            ("rpn.", "head.rpn."), ("roi_heads.", "head.roi_heads."))
LEGACY_NAMES = (  # torchvision < 0.13 names -> today's (its own _load_from_state_dict upgrades)
    (re.compile(r"rpn\.head\.conv\.(weight|bias)"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"roi_heads\.mask_head\.mask_fcn([1-4])\.(weight|bias)"),
     lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0.{m[2]}"),
    (re.compile(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(weight|bias)"), r"backbone.fpn.\1_blocks.\2.0.\3"),
)


def torchvision_to_cupre(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename a torchvision ``maskrcnn_resnet50_fpn`` state dict (today's or pre-0.13 names)
    to cupre's names (``backbone.``, ``neck.``, ``head.rpn.``, ``head.roi_heads.``), the same
    tensors without BatchNorm ``num_batches_tracked`` counters.

    Raises:
        CupreError: the input is empty, or a key is not torchvision Mask R-CNN's (the first one named).
    """
    if not isinstance(state, dict) or not state:
        raise CupreError("not a torchvision Mask R-CNN state dict: expected a non-empty mapping of tensors")
    out = {}
    for key, tensor in state.items():
        for pattern, new in LEGACY_NAMES:
            if pattern.fullmatch(key):
                key = pattern.sub(new, key)
        if key.startswith("backbone.body.") and key.endswith(".num_batches_tracked"):
            continue  # BatchNorm's step counter; FrozenBatchNorm2d has none
        prefix = next((p for p in PREFIXES if key.startswith(p[0])), None)
        if prefix is None or not isinstance(tensor, Tensor):
            raise CupreError(f"not a torchvision Mask R-CNN state dict: key {key!r} is not under "
                             f"{', '.join(p[0] for p in PREFIXES)} or holds no tensor")
        out[prefix[1] + key[len(prefix[0]):]] = tensor
    return out


def coco_cache_path() -> Path:
    """Where torchvision caches ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1`` (``<hub dir>/checkpoints/``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(COCO_WEIGHTS.url).path).name


def read_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file, or a torch file read as plain tensors (a ``{"model": ...}`` checkpoint unwrapped)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path), device="cpu")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch and safetensors raise many kinds on such files
        raise CupreError(f"{path}: cannot be read as plain tensors ({exc.__class__.__name__})") from None
    return state["model"] if isinstance(state, dict) and isinstance(state.get("model"), dict) else state


def load_torchvision_coco(path: str | Path | None = None, *, download: bool = False) -> dict[str, Tensor]:
    """torchvision's COCO-trained Mask R-CNN R50-FPN weights under cupre's names.

    Args:
        path: a file with the weights; None: torchvision's cache (:func:`coco_cache_path`).
        download: when not cached, download through torchvision's weights API.

    Raises:
        CupreError: the file is missing or unreadable, or not cached and ``download`` unset.
    """
    source = coco_cache_path() if path is None else Path(path)
    if source.is_file():
        return torchvision_to_cupre(read_tensors(source))
    if path is not None:
        raise CupreError(f"{source}: torchvision COCO Mask R-CNN weights not found")
    if not download:
        raise CupreError(f"{source}: torchvision's COCO Mask R-CNN weights are not cached; pass a file with them, "
                         "download them once (download=True, needs network), or use the synthetic-object COCO stage")
    try:
        state = COCO_WEIGHTS.get_state_dict(map_location="cpu", progress=True, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - urllib, hash and unpickling errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CupreError(f"{COCO_WEIGHTS.url}: download failed ({exc.__class__.__name__}: {first}); "
                         f"copy the file to {source} instead") from None
    return torchvision_to_cupre(state)


def build_torchvision_coco_detector(path: str | Path | None = None, *, download: bool = False,
                                    refit: bool = True) -> tuple[CupreDetector, DetectorConfig]:
    """cupre's Mask R-CNN holding torchvision's COCO weights (90 classes, COCO's category ids).

    Args:
        path, download: as for :func:`load_torchvision_coco`.
        refit: fold ImageNet standardisation into the stem (:func:`refit_stem`).
    """
    cfg = DetectorConfig.from_dict(TORCHVISION_COCO_DETECTOR, where="torchvision COCO detector")
    state = load_torchvision_coco(path, download=download)
    model = build_detector(cfg)
    check_state(path or coco_cache_path(), model, state)
    model.load_state_dict(state)
    if refit:
        refit_stem(model.backbone, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    return model, cfg


@torch.no_grad()
def refit_stem(backbone: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make a body trained on ``(x - mean) / std`` see cupre's ``(x - PIXEL_MEAN) / PIXEL_STD``.

    Theirs is ``a * ours + b`` per channel (``a = PIXEL_STD / std``, ``b = (PIXEL_MEAN - mean)
    / std``), so the first conv's weights are scaled by ``a`` and its constant response to
    ``b``, ``sum(W * b)`` per output channel, goes into the next norm's running mean (or the
    conv's bias). Exact except within the conv's reach of a zero-padded border.
    """
    modules = list(backbone.modules())
    first = next(i for i, m in enumerate(modules) if isinstance(m, nn.Conv2d))
    conv = modules[first]
    a = torch.tensor(PIXEL_STD) / torch.tensor(std)
    b = (torch.tensor(PIXEL_MEAN) - torch.tensor(mean)) / torch.tensor(std)
    offset = (conv.weight * b.view(1, -1, 1, 1).to(conv.weight)).sum(dim=(1, 2, 3))
    if conv.bias is not None:
        conv.bias += offset
    else:
        norm = next((m for m in modules[first + 1:] if getattr(m, "running_mean", None) is not None), None)
        if norm is None:
            raise CupreError(f"{type(backbone).__name__}: no norm after the first conv to refit the stem into")
        norm.running_mean -= offset
    conv.weight *= a.view(1, -1, 1, 1).to(conv.weight)


@contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for the block (and huggingface_hub's flag, which it reads at import)."""
    env, flag = os.environ.get("HF_HUB_OFFLINE"), hf_constants.HF_HUB_OFFLINE
    if offline:
        os.environ["HF_HUB_OFFLINE"], hf_constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = flag
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def timm_imagenet_backbone(name: str, *, norm: str = "frozen_bn", file: str | Path | None = None,
                           download: bool = False, refit: bool = True) -> nn.Module:
    """A cupre backbone (:func:`build_backbone`) holding timm's ImageNet weights.

    Args:
        name: timm model name, optionally with a weight tag (``resnet50.a1_in1k``).
        norm: ``frozen_bn`` | ``bn`` | ``syncbn`` (ImageNet weights come with BatchNorm statistics).
        file: a local weight file for the whole timm classifier (safetensors or torch);
            None: the Hugging Face / timm cache.
        download: fetch into the cache when missing (otherwise the hub is kept offline).
        refit: fold the weights' own standardisation into the stem (:func:`refit_stem`).

    Raises:
        CupreError: ``norm`` is ``gn``; the weights are neither cached nor in ``file``.
    """
    if norm == "gn":
        raise CupreError(f"{name}: ImageNet weights need a BatchNorm backbone (norm frozen_bn, bn or syncbn), not gn")
    body = build_backbone(name=name, norm=norm)
    if file is not None and not Path(file).is_file():
        raise CupreError(f"{file}: ImageNet weights for {name} not found")
    where = file or name
    if file is None and not download:
        check_no_url_download(name)
    try:
        with hub_offline(not download):
            full = timm.create_model(name, pretrained=True, norm_layer=norm_factory(norm),
                                     pretrained_cfg_overlay={"file": str(file)} if file else None)
    except OSError as exc:
        if file is None:
            raise CupreError(f"{name}: ImageNet weights are not in the local Hugging Face / timm cache; run once with "
                             "download=True (needs network), copy the cache (HF_HOME) here, or pass file=") from None
        raise CupreError(f"{file}: cannot be read ({exc.__class__.__name__})") from None
    except Exception as exc:  # noqa: BLE001 - no weights for this name, an unreadable file, other tensors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CupreError(f"{where}: no {name} ImageNet weights ({exc.__class__.__name__}: {first})") from None
    source = full.state_dict()  # the classifier's; the body holds all but its head
    state = {key: source[key] for key in body.state_dict() if key in source}
    check_state(where, body, state)
    body.load_state_dict(state)
    if refit:
        refit_stem(body, mean=full.pretrained_cfg["mean"], std=full.pretrained_cfg["std"])
    return body


def check_no_url_download(name: str) -> None:
    """Refuse the weights timm would fetch from a URL (no Hugging Face copy) when they are not cached."""
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or cfg.hf_hub_id or not cfg.url:
        return
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
    if not cached.is_file():
        raise CupreError(f"{name}: ImageNet weights are not cached at {cached}; run once with download=True "
                         "(needs network), copy the file there, or pass file=")
