"""Detector: backbones, one training step, eval outputs, parts, predictor reset, cascade."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cupre.config import DetectorConfig
from cupre.errors import CupreError
from cupre.models.backbone import build_backbone
from cupre.models.detector import CupreDetector, build_detector
from tests.helpers import TINY_DETECTOR

RPN_KEYS = {"loss_objectness", "loss_rpn_box_reg"}
MASKRCNN_KEYS = RPN_KEYS | {"loss_classifier", "loss_box_reg", "loss_mask"}
BOTTLENECK_CHANNELS = [256, 512, 1024, 2048]


def tiny_config(**overrides) -> DetectorConfig:
    values = {**TINY_DETECTOR, "box_score_thresh": 0.0, "detections_per_img": 40, **overrides}
    return DetectorConfig.from_dict(values)


def make_target(height: int, width: int, num: int, *, seed: int = 0, num_classes: int = 1) -> dict:
    """``num`` rectangular cells with matching boxes (x2/y2 exclusive) and masks."""
    gen = torch.Generator().manual_seed(seed)
    masks = torch.zeros((num, height, width), dtype=torch.uint8)
    boxes = torch.zeros((num, 4))
    for i in range(num):
        w, h = (int(v) for v in torch.randint(8, 24, (2,), generator=gen))
        x = int(torch.randint(0, width - w, (1,), generator=gen))
        y = int(torch.randint(0, height - h, (1,), generator=gen))
        masks[i, y : y + h, x : x + w] = 1
        boxes[i] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
    labels = torch.randint(1, num_classes + 1, (num,), generator=gen)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def train_step(model: CupreDetector, images, targets) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad(set_to_none=True)
    losses = model(images, targets)
    sum(losses.values()).backward()
    return losses


@pytest.fixture(scope="module")
def model() -> CupreDetector:
    torch.manual_seed(0)
    return build_detector(tiny_config())


@pytest.mark.parametrize(
    "name, channels",
    [
        ("resnet18", [64, 128, 256, 512]),
        ("resnet50", BOTTLENECK_CHANNELS),
        ("resnest14d", BOTTLENECK_CHANNELS),
        ("resnest50d", BOTTLENECK_CHANNELS),
        ("resnest200e", BOTTLENECK_CHANNELS),
    ],
)
def test_backbones_build_with_group_norm(name, channels):
    body = build_backbone(name=name, norm="gn")
    assert body.feature_info.channels() == channels
    assert body.feature_info.reduction() == [4, 8, 16, 32]
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    assert not norms and any(isinstance(m, nn.GroupNorm) for m in body.modules())


@pytest.mark.parametrize("norm, layer", [("bn", nn.BatchNorm2d), ("syncbn", nn.SyncBatchNorm)])
def test_batch_norm_backbones_train_without_distributed(norm, layer):
    body = build_backbone(name="resnet18", norm=norm).train()
    assert isinstance(body.bn1, layer)
    assert [f.shape[1] for f in body(torch.rand(2, 3, 64, 64))] == [64, 128, 256, 512]


def test_unknown_backbone_or_norm_is_a_user_error():
    with pytest.raises(CupreError, match="not a timm model"):
        build_backbone(name="resnet_nonexistent")
    with pytest.raises(CupreError, match="norm"):
        build_backbone(name="resnet18", norm="layernorm")


def test_frozen_bn_backbone_has_no_trainable_norm():
    body = build_backbone(name="resnet18", norm="frozen_bn")
    frozen = [m for m in body.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert frozen and all(not list(m.parameters()) for m in frozen)
    # zero-init of the last norm would freeze residual branches at zero forever
    assert all(bool((m.weight != 0).all()) for m in frozen)


def test_resnest_group_norm_trains_at_batch_one_and_keeps_attention():
    torch.manual_seed(0)
    body = build_backbone(name="resnest14d", norm="gn").train()
    splat = next(m for m in body.modules() if type(m).__name__ == "SplitAttn")
    captured = []
    splat.rsoftmax.register_forward_hook(lambda mod, inp, out: captured.append(out.detach()))
    features = body(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == BOTTLENECK_CHANNELS
    assert [f.shape[-1] for f in features] == [16, 8, 4, 2]
    sum(f.mean() for f in features).backward()
    assert all(p.grad is not None for p in body.parameters() if p.requires_grad)
    body(torch.randn(1, 3, 64, 64) * 3)
    # the split attention depends on the input (a 32-group GN on its 32x1x1 vector raises at batch 1)
    assert not torch.allclose(captured[0], captured[1])
    # and BatchNorm is what fails at batch 1
    with pytest.raises(ValueError):
        build_backbone(name="resnest14d", norm="bn").train()(torch.randn(1, 3, 64, 64))


def test_training_step_losses_and_gradients(model):
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 144)]
    targets = [make_target(128, 128, 6, seed=1), make_target(112, 144, 0)]  # second image: no cells
    losses = train_step(model, images, targets)
    assert set(losses) == MASKRCNN_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    for name, part in model.parts().items():
        grads = [p.grad.abs().sum() for p in part.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, f"no gradient reached {name}"


def test_images_without_cells_train(model):
    images = [torch.rand(3, 96, 96)]
    losses = train_step(model, images, [make_target(96, 96, 0)])
    assert set(losses) == MASKRCNN_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() == 0.0 and losses["loss_objectness"].item() > 0


def test_eval_outputs_in_original_image_size(model):
    model.eval()
    sizes = [(100, 140), (128, 128)]
    with torch.no_grad():
        outputs = model([torch.rand(3, h, w) for h, w in sizes])
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, sizes):
        n = out["boxes"].shape[0]
        assert n > 0 and out["boxes"].shape == (n, 4) and out["boxes"].dtype == torch.float32
        assert out["labels"].shape == (n,) and out["labels"].dtype == torch.int64
        assert out["scores"].shape == (n,) and out["scores"].dtype == torch.float32
        assert "masks" not in out and out["mask_origins"].shape == (n, 2) and len(out["mask_crops"]) == n
        boxes = out["boxes"]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
        # box-local masks: each window lies in the image; its foreground inside its box (one pixel of slack)
        for crop, (y0, x0), (x1, y1, x2, y2) in zip(out["mask_crops"], out["mask_origins"].tolist(), boxes.tolist()):
            assert crop.dtype == torch.bool and y0 >= 0 and x0 >= 0
            assert y0 + crop.shape[0] <= h and x0 + crop.shape[1] <= w
            ys, xs = torch.nonzero(crop, as_tuple=True)
            ys, xs = ys + y0, xs + x0
            if len(xs):
                assert xs.min() >= math.floor(x1) - 1 and xs.max() <= math.ceil(x2)
                assert ys.min() >= math.floor(y1) - 1 and ys.max() <= math.ceil(y2)


def test_parts_partition_parameters(model):
    total = dict(model.named_parameters())
    seen: set[int] = set()
    for name, part in model.parts().items():
        ids = {id(p) for p in part.parameters()}
        assert ids and not ids & seen, f"{name} is empty or overlaps another part"
        seen |= ids
    assert seen == {id(p) for p in total.values()}
    assert {n.split(".")[0] for n in total} == {"backbone", "neck", "head"}
    c5 = model.backbone(torch.zeros(1, 3, 64, 64))[-1]  # the stride-32 map MoCo's projection reads
    assert model.backbone_out_channels == c5.shape[1] and c5.shape[-1] == 2


def test_heads_and_neck_are_kaiming_initialised(model):
    for module in [model.neck, model.head.roi_heads.box_head, model.head.roi_heads.mask_head]:
        for layer in module.modules():
            if isinstance(layer, nn.GroupNorm):
                assert torch.all(layer.weight == 1) and torch.all(layer.bias == 0)
            if isinstance(layer, nn.Conv2d) and layer.bias is not None:
                assert torch.all(layer.bias == 0)
    conv = model.head.roi_heads.mask_head[0][0]
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.15)


def test_reset_predictors_changes_only_predictors():
    torch.manual_seed(0)
    model = build_detector(tiny_config())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_predictors(3)
    after = model.state_dict()
    assert set(before) == set(after)
    predictor = ("head.roi_heads.box_predictor.", "head.roi_heads.mask_predictor.mask_fcn_logits.")
    for key in before:
        if key.startswith(predictor):
            assert after[key].shape != before[key].shape, key
        else:
            assert torch.equal(after[key], before[key]), key
    assert model.head.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.head.roi_heads.box_predictor.bbox_pred.out_features == 16
    assert model.head.roi_heads.mask_predictor.mask_fcn_logits.out_channels == 4
    losses = train_step(model, [torch.rand(3, 96, 96)], [make_target(96, 96, 4, num_classes=3)])
    assert all(torch.isfinite(v) for v in losses.values())


def test_cascade_detector_trains_and_predicts():
    pytest.importorskip("cupre.models.heads.cascade")
    torch.manual_seed(0)
    model = build_detector(tiny_config(arch="cascade", backbone="resnest14d"))
    losses = train_step(model, [torch.rand(3, 112, 112)], [make_target(112, 112, 5, seed=2)])
    assert RPN_KEYS < set(losses) and "loss_mask" in losses
    assert any(k.endswith("_stage3") for k in losses)
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.head.roi_heads.parameters())
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 90, 120)])
    n = out["boxes"].shape[0]
    assert len(out["mask_crops"]) == n and out["mask_origins"].shape == (n, 2)
    assert out["scores"].shape == (n,) and out["labels"].shape == (n,)


def test_degenerate_boxes_are_rejected(model):
    target = make_target(64, 64, 2)
    target["boxes"][1, 2] = target["boxes"][1, 0]
    model.train()
    with pytest.raises(ValueError, match="x2 > x1"):
        model([torch.rand(3, 64, 64)], [target])


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade"])
def test_boxes_stay_fp32_under_bf16_autocast(arch):
    torch.manual_seed(0)
    model = build_detector(tiny_config(arch=arch)).eval()
    proposals = []
    model.head.rpn.register_forward_hook(lambda m, args, out: proposals.extend(out[0]))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (out,) = model([torch.rand(3, 320, 320)])
    assert all(p.dtype == torch.float32 for p in proposals) and out["boxes"].dtype == torch.float32
    # bf16 would put every coordinate between 256 and 511 px on a 2 px grid
    coords = torch.cat(proposals).flatten()
    big = coords[(coords > 256) & (coords < 300)]
    assert len(big) and (big.remainder(2.0) != 0).any()


def test_rpn_box_that_no_anchor_overlaps_makes_no_positives():
    """A 1 px sliver at the right edge lies beyond the last anchor: no anchor overlaps it.
    torchvision's matcher then made every anchor that misses it a positive."""
    from torchvision.models.detection import _utils as det_utils
    from torchvision.models.detection.image_list import ImageList
    from torchvision.ops import box_iou

    rpn = build_detector(tiny_config()).head.rpn
    ours = rpn.proposal_matcher
    features = [torch.zeros(1, 32, 64 // s, 64 // s) for s in (4, 8, 16, 32, 64)]
    (anchors,) = rpn.anchor_generator(ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)]), features)
    nucleus, sliver = [10.0, 10.0, 30.0, 30.0], [63.0, 20.0, 64.0, 24.0]
    assert box_iou(torch.tensor([sliver]), anchors).max() == 0

    def positives(matcher, boxes) -> int:
        rpn.proposal_matcher = matcher
        (labels,), _ = rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.tensor(boxes)}])
        return int((labels == 1).sum())

    stock = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=True)
    alone = positives(stock, [nucleus])
    assert 0 < positives(ours, [nucleus, sliver]) == alone < 10
    assert positives(stock, [nucleus, sliver]) > len(anchors) // 2


def test_invert_bright_sees_a_bright_background_image_as_its_inverse():
    """With ``invert_bright`` the detector's own transform inverts an image with a bright
    background (in training and in eval), and leaves a dark-background image alone."""
    torch.manual_seed(0)
    plain = build_detector(tiny_config())
    inverting = build_detector(tiny_config(invert_bright=True))
    inverting.load_state_dict(plain.state_dict())
    dark = torch.rand(3, 64, 80) * 0.3
    bright = 1.0 - dark
    target = make_target(64, 80, 3)
    for net in (plain, inverting):
        net.train()
    torch.manual_seed(1)
    want = plain([dark], [target])
    torch.manual_seed(1)
    got = inverting([bright], [target])
    assert all(torch.allclose(got[k], want[k]) for k in want)
    plain.eval(), inverting.eval()
    with torch.no_grad():
        want, got, same = plain([dark])[0], inverting([bright])[0], inverting([dark])[0]
        changed = plain([bright])[0]
    assert len(want["boxes"]) > 0 and torch.equal(got["boxes"], want["boxes"])
    assert torch.equal(same["boxes"], want["boxes"])  # a dark background is left alone
    assert len(changed["boxes"]) != len(want["boxes"]) or not torch.equal(changed["boxes"], want["boxes"])


def test_invert_bright_rule_splits_the_real_nuclei_kinds():
    """On the package's real BBBC038 images the rule inverts the brightfield kinds (colour,
    grey bright-background) and none of the fluorescence ones."""
    from pathlib import Path

    from cupre.data.imageio import normalize, read_image
    from cupre.models.intensity import dark_background

    folder = Path(__file__).resolve().parents[2] / "src" / "cupre" / "presets" / "nuclei"
    files = [p for p in folder.rglob("*.png") if not p.stem.endswith("_masks")]
    kinds = {p.name.split("-")[0].split("_")[0] for p in files}
    assert {"fluo", "colour", "bright"} <= kinds, kinds
    for path in files:
        image = normalize(read_image(path))
        inverted = not torch.equal(dark_background(image), image)
        assert inverted == (not path.name.startswith("fluo")), path.name
