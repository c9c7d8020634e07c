"""Typed configs. Unknown or wrongly typed keys fail with the valid keys listed.

Each config is a frozen-free dataclass that can be built from a plain dict (YAML):
``DetectorConfig.from_dict({...})``. Nested configs are dataclasses too.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cupre.errors import CupreError

T = TypeVar("T", bound="ConfigBase")


class ConfigBase:
    """Mixin: strict construction from dicts, and back."""

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any] | None, *, where: str = "") -> T:
        data = dict(data or {})
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        where = where or cls.__name__
        if unknown:
            raise CupreError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}"
            )
        kwargs = {}
        for name, value in data.items():
            kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if isinstance(hint, type) and issubclass(hint, ConfigBase):
        if isinstance(value, hint):
            return value
        if not isinstance(value, dict):
            raise CupreError(f"{where}: expected a mapping, got {value!r}")
        return hint.from_dict(value, where=where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except CupreError as exc:
                errors.append(str(exc))
        raise CupreError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise CupreError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CupreError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise CupreError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, where) for a, v in zip(args, value))
        inner = args[0] if args else Any
        seq = [_coerce(inner, v, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    if origin is dict:
        if not isinstance(value, dict):
            raise CupreError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, (str, Path)):
        return Path(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise CupreError(f"{where}: expected {hint.__name__}, got {value!r}")
    if hint is int and isinstance(value, bool):
        raise CupreError(f"{where}: expected int, got {value!r}")
    return value


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise CupreError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CupreError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CupreError(f"{path}: expected a mapping at the top level")
    return data


@dataclass
class DetectorConfig(ConfigBase):
    """Mask R-CNN / Cascade Mask R-CNN: backbone (timm) + neck (FPN) + head (RPN + RoI).

    Defaults suit crowded cell images: small anchors, many proposals, up to 2,000
    detections per image.
    """

    arch: typing.Literal["maskrcnn", "cascade"] = "maskrcnn"
    backbone: str = "resnet50"  # any timm ResNet/ResNeSt: resnet18, resnet50, resnest14d, resnest50d, resnest200e
    norm: typing.Literal["gn", "frozen_bn", "bn", "syncbn"] = "gn"
    num_classes: int = 1  # foreground classes (background excluded)
    fpn_channels: int = 256
    min_size: int = 512  # images are resized so the short side is min_size ...
    max_size: int = 1024  # ... and the long side at most max_size
    anchor_sizes: tuple[int, ...] = (8, 16, 32, 64, 128)  # one size per FPN level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 3000
    rpn_post_nms_top_n_test: int = 2000
    rpn_batch_size_per_image: int = 256
    box_batch_size_per_image: int = 512
    box_score_thresh: float = 0.01
    box_nms_thresh: float = 0.5
    detections_per_img: int = 2000
    cascade_ious: tuple[float, ...] = (0.5, 0.6, 0.7)
    mask_threshold: float = 0.5
