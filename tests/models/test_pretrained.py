"""torchvision COCO / timm ImageNet starting points, on untrained models made here (nothing downloads)."""

from __future__ import annotations

import os

import huggingface_hub.constants as hf_constants
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn
from torchvision.models.detection import maskrcnn_resnet50_fpn
from torchvision.ops import FrozenBatchNorm2d

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.models import PIXEL_MEAN, PIXEL_STD
from cupre.models.detector import build_detector, channels_last_convs
from cupre.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TORCHVISION_COCO_DETECTOR,
    build_torchvision_coco_detector,
    coco_cache_path,
    load_torchvision_coco,
    timm_imagenet_backbone,
    torchvision_to_cupre,
)

COCO_FILE = "maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"  # the name in COCO_V1's url
STEM_CHANGES = {"conv1.weight", "bn1.running_mean"}  # what refit_stem touches


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torchvision_model() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Untrained ``maskrcnn_resnet50_fpn`` that does not resize a 256x320 image and
    standardises as cupre does (box score threshold 0, as in the cupre model below), and
    its state dict as made (BatchNorm body, with ``num_batches_tracked``)."""
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, min_size=256, max_size=320,
                                  image_mean=list(PIXEL_MEAN), image_std=list(PIXEL_STD), box_score_thresh=0.0)
    return model.eval(), model.state_dict()


@pytest.fixture(scope="module")
def torchvision_state(torchvision_model) -> dict[str, torch.Tensor]:
    return torchvision_model[1]


@pytest.fixture(scope="module")
def coco_file(torchvision_state, tmp_path_factory):
    """The untrained state dict saved where torchvision would cache COCO_V1 (under a hub dir)."""
    hub = tmp_path_factory.mktemp("hub")
    (hub / "checkpoints").mkdir()
    path = hub / "checkpoints" / COCO_FILE
    torch.save(torchvision_state, path)
    return path


def frozen(module: nn.Module) -> nn.Module:
    """Swap every BatchNorm2d for a FrozenBatchNorm2d with its statistics, as torchvision
    builds the body when it loads trained weights."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            bn = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        else:
            frozen(child)
    return module


def stem(body_conv: nn.Module, body_bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """First conv + norm, away from the 7x7 conv's zero padding (2 output pixels each side)."""
    return body_bn(body_conv(x[None]))[..., 2:-2, 2:-2]


def test_mapped_torchvision_weights_give_torchvision_detections(torchvision_model):
    """Every tensor maps; both models give the same detections on one image.

    Differences found: an untrained torchvision model uses BatchNorm2d (its state dict has
    ``num_batches_tracked``, which the mapping drops) where a trained one and cupre use
    FrozenBatchNorm2d, and cupre runs its convs channels-last. Both change only rounding
    (scores differed by 4e-5 and near-tied detections swapped places), so the torchvision
    model is made frozen-BN and channels-last here, and the outputs agree exactly.
    torchvision's resize with min_size/max_size at the image's size is the identity
    (scale 1), and its standardisation is set to cupre's.
    """
    tv_model, tv_state = torchvision_model
    assert any(k.endswith("num_batches_tracked") for k in tv_state)
    cfg = DetectorConfig.from_dict({**TORCHVISION_COCO_DETECTOR, "box_score_thresh": 0.0})
    model = build_detector(cfg).eval()
    result = model.load_state_dict(torchvision_to_cupre(tv_state), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    reference = channels_last_convs(frozen(tv_model))
    image = torch.rand(3, 256, 320, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference([image])[0]
        got = model([image])[0]
    assert len(expected["boxes"]) == len(got["boxes"]) == cfg.detections_per_img
    assert expected["scores"].min() > 0.5  # random weights, yet confident detections
    torch.testing.assert_close(got["scores"], expected["scores"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["boxes"], expected["boxes"], atol=1e-3, rtol=0)
    assert torch.equal(got["labels"], expected["labels"])


def test_legacy_torchvision_names_map_like_todays(torchvision_state):
    today = torchvision_state
    old = {}
    for key, value in today.items():  # names of the published COCO file (torchvision < 0.13)
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for i in range(4):
            key = key.replace(f"mask_head.{i}.0.", f"mask_head.mask_fcn{i + 1}.")
            key = key.replace(f"inner_blocks.{i}.0.", f"inner_blocks.{i}.").replace(f"layer_blocks.{i}.0.",
                                                                                    f"layer_blocks.{i}.")
        old[key] = value
    assert "roi_heads.mask_head.mask_fcn4.weight" in old and "backbone.fpn.layer_blocks.3.bias" in old
    mapped_old, mapped_today = torchvision_to_cupre(old), torchvision_to_cupre(today)
    assert mapped_old.keys() == mapped_today.keys() and all(mapped_old[k] is mapped_today[k] for k in mapped_today)


def test_other_state_dicts_are_refused(torchvision_state):
    cupre_keys = {"backbone.conv1.weight": torch.zeros(1)}  # a cupre state dict, say
    extra = {**torchvision_state, "fc.weight": 0}
    for state, named in ((cupre_keys, "'backbone.conv1.weight'"), (extra, "'fc.weight'"), ({}, "non-empty")):
        with pytest.raises(CupreError) as err:
            torchvision_to_cupre(state)
        assert "\n" not in str(err.value) and "torchvision Mask R-CNN" in str(err.value) and named in str(err.value)


def test_load_torchvision_coco_from_a_file_or_the_cache(torchvision_state, coco_file, tmp_path, monkeypatch):
    mapped = torchvision_to_cupre(torchvision_state)
    loaded = load_torchvision_coco(coco_file)
    assert loaded.keys() == mapped.keys() and all(torch.equal(loaded[k], mapped[k]) for k in mapped)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(coco_file.parent.parent))
    assert coco_cache_path() == coco_file
    assert load_torchvision_coco().keys() == mapped.keys()

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CupreError) as err:
        load_torchvision_coco(download=False)
    assert str(tmp_path / "checkpoints" / COCO_FILE) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CupreError, match="not found"):
        load_torchvision_coco(tmp_path / "missing.pth")


def test_coco_detector_sees_cupre_pixels_as_torchvision_saw_imagenet_pixels(torchvision_state, coco_file):
    model, cfg = build_torchvision_coco_detector(coco_file)
    assert cfg.num_classes == 90 and cfg.norm == "frozen_bn" and cfg.rpn_pre_nms_top_n_test == 1000
    mapped = torchvision_to_cupre(torchvision_state)
    state = model.state_dict()
    changed = {k for k in mapped if not torch.equal(state[k], mapped[k])}
    assert changed == {f"backbone.{k}" for k in STEM_CHANGES}

    x = torch.rand(3, 64, 80, generator=torch.Generator().manual_seed(2))
    theirs = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    ours = (x - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    body = frozen(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).backbone.body)
    body.load_state_dict({k[len("backbone.body."):]: v for k, v in torchvision_state.items()
                          if k.startswith("backbone.body.")})
    with torch.no_grad():
        torch.testing.assert_close(stem(model.backbone.conv1, model.backbone.bn1, ours),
                                   stem(body.conv1, body.bn1, theirs), atol=1e-4, rtol=1e-4)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Hugging Face and torch hub caches in an empty folder, so the real ones are not consulted."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))  # read at import
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


def test_timm_backbone_from_a_local_file(empty_caches):
    torch.manual_seed(0)
    source = timm.create_model("resnet18").state_dict()
    path = empty_caches / "resnet18.safetensors"
    save_file(source, str(path))

    body = timm_imagenet_backbone("resnet18", file=path, refit=False)
    state = body.state_dict()
    assert {k for k in source if not k.startswith("fc.")} - {k for k in source if "num_batches" in k} == set(state)
    assert all(torch.equal(state[k], source[k]) for k in state)

    refit = timm_imagenet_backbone("resnet18", norm="bn", file=path).state_dict()
    assert {k for k in state if not torch.equal(refit[k], state[k])} == STEM_CHANGES

    with pytest.raises(CupreError, match="not found"):
        timm_imagenet_backbone("resnet18", file=empty_caches / "missing.safetensors")
    save_file({"conv1.weight": torch.zeros(1)}, str(empty_caches / "other.safetensors"))
    with pytest.raises(CupreError, match="no resnet18 ImageNet weights"):
        timm_imagenet_backbone("resnet18", file=empty_caches / "other.safetensors")


def test_timm_backbone_refuses_gn_and_missing_weights_offline(empty_caches):
    with pytest.raises(CupreError, match="BatchNorm"):
        timm_imagenet_backbone("resnet18", norm="gn")
    offline = hf_constants.HF_HUB_OFFLINE
    with pytest.raises(CupreError) as err:
        timm_imagenet_backbone("resnet18", download=False)
    message = str(err.value)
    assert "resnet18" in message and "cache" in message and "\n" not in message
    assert "HF_HUB_OFFLINE" not in os.environ and hf_constants.HF_HUB_OFFLINE == offline  # restored


def test_pretraining_can_start_from_torchvisions_coco_model(coco_file, tmp_path):
    from cupre.modelfile import load_model_file
    from cupre.models.pretrained import TORCHVISION_COCO_DETECTOR
    from cupre.train.coco import start_from_torchvision_coco
    from cupre.train.run import Run

    cfg = DetectorConfig.from_dict({**TORCHVISION_COCO_DETECTOR, "num_classes": 3, "object_size": 20})
    model = build_detector(cfg)
    cats = [{"id": i, "name": f"c{i}"} for i in (1, 2, 3)]
    start_from_torchvision_coco(model=model, detector_cfg=cfg, categories=cats, run=Run(tmp_path / "warmup"),
                                weights=str(coco_file))
    saved = load_model_file(tmp_path / "warmup" / "model.safetensors")
    reference, _ = build_torchvision_coco_detector(coco_file)
    theirs = reference.state_dict()
    for key in ("backbone.layer4.2.conv3.weight", "neck.layer_blocks.0.0.weight",
                "head.roi_heads.mask_head.0.0.weight"):
        assert torch.equal(saved["model"][key], theirs[key])
    # three classes, not COCO's 90: the class-specific layers are the fresh ones
    assert saved["model"]["head.roi_heads.box_predictor.cls_score.weight"].shape[0] == 4
    assert saved["stage"] == "warmup:torchvision-coco" and saved["categories"] == cats
    with pytest.raises(CupreError, match="needs torchvision's architecture.*backbone: resnet18"):
        small = DetectorConfig.from_dict({"backbone": "resnet18", "norm": "frozen_bn"})
        start_from_torchvision_coco(model=build_detector(small), detector_cfg=small, categories=cats,
                                    run=Run(tmp_path / "other"), weights=str(coco_file))
