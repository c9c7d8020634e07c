"""Test-time RoI work in chunks: same detections and masks as one piece, and the
``select`` step that skips masks for detections a caller drops."""

from __future__ import annotations

import pytest
import torch

from cupre.config import DetectorConfig
from cupre.models.detector import build_detector
from cupre.models.heads.chunks import box_chunks
from tests.helpers import TINY_DETECTOR


def test_box_chunks_cover_every_box_once_in_order():
    boxes = [torch.arange(5 * 4.0).reshape(5, 4), torch.zeros(0, 4), torch.arange(100, 112.0).reshape(3, 4)]
    pieces = list(box_chunks(boxes, 3))
    assert [sum(len(b) for b in piece) for piece in pieces] == [3, 3, 2]
    assert all(len(piece) == 3 for piece in pieces)  # always one entry per image
    joined = torch.cat([b for piece in pieces for b in piece])
    assert torch.equal(joined, torch.cat(boxes))
    (empty,) = box_chunks([torch.zeros(0, 4)], 3)  # nothing at all: one empty piece
    assert len(empty) == 1 and len(empty[0]) == 0


def _model(arch: str):
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "arch": arch, "box_score_thresh": 0.0,
                                    "box_nms_thresh": 1.0, "detections_per_img": 60})
    torch.manual_seed(0)
    return build_detector(cfg).eval()


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade"])
def test_chunked_heads_match_one_piece(arch):
    model = _model(arch)
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    with torch.no_grad():
        model.head.roi_heads.chunk_size = 10_000
        whole = model(images)
        model.head.roi_heads.chunk_size = 7
        chunked = model(images)
    for a, b in zip(whole, chunked):
        assert len(a["boxes"]) == 60
        torch.testing.assert_close(a["boxes"], b["boxes"])
        torch.testing.assert_close(a["scores"], b["scores"])
        assert all(torch.equal(x, y) for x, y in zip(a["mask_crops"], b["mask_crops"]))
        assert torch.equal(a["mask_origins"], b["mask_origins"])


def test_select_keeps_the_chosen_detections_with_the_same_masks():
    model = _model("maskrcnn")
    images = [torch.rand(3, 64, 96), torch.rand(3, 64, 64)]
    asked = []

    def left_half(i, boxes):
        asked.append((i, boxes.clone()))
        return (boxes[:, 0] + boxes[:, 2]) / 2 < 32

    with torch.no_grad():
        whole = model(images, scales=[1.5, 1.0])
        kept = model(images, scales=[1.5, 1.0], select=left_half)
    assert [i for i, _ in asked] == [0, 1]
    for (_, boxes), a, b in zip(asked, whole, kept):
        torch.testing.assert_close(boxes, a["boxes"])  # select sees boxes in original pixels
        keep = (a["boxes"][:, 0] + a["boxes"][:, 2]) / 2 < 32
        assert 0 < int(keep.sum()) < len(keep)
        torch.testing.assert_close(b["boxes"], a["boxes"][keep])
        crops = [c for c, k in zip(a["mask_crops"], keep) if k]
        assert all(torch.equal(x, y) for x, y in zip(crops, b["mask_crops"]))


def test_bf16_forward_returns_fp32_outputs_close_to_fp32():
    model = _model("maskrcnn")
    images = [torch.rand(3, 64, 96)]
    with torch.no_grad():
        reference = model(images)[0]
        model.precision = "bf16"
        out = model(images)[0]
    assert out["boxes"].dtype == torch.float32 and out["scores"].dtype == torch.float32
    assert len(out["boxes"]) == len(reference["boxes"])
    # the same proposals mostly survive: most bf16 boxes have a close fp32 twin
    from torchvision.ops import box_iou

    best = box_iou(out["boxes"], reference["boxes"]).max(dim=1).values
    assert float((best > 0.9).float().mean()) > 0.5


def test_mask_logits_equal_the_transposed_convolution():
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    from cupre.models.heads.chunks import mask_logits

    torch.manual_seed(0)
    predictor = MaskRCNNPredictor(16, 8, 3).eval()
    torch.nn.init.normal_(predictor.conv5_mask.bias)
    x = torch.randn(5, 16, 14, 14)
    with torch.no_grad():
        torch.testing.assert_close(mask_logits(predictor, x), predictor(x), rtol=1e-5, atol=1e-5)


def _without_layout_hooks(model):
    """A copy of ``model`` whose convolutions take their inputs as they come (NCHW)."""
    import copy

    plain = copy.deepcopy(model)
    for module in plain.modules():
        module._forward_pre_hooks.clear()
    return plain


def _wide_model():
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "fpn_channels": 128, "box_score_thresh": 0.0,
                                    "box_nms_thresh": 1.0, "detections_per_img": 60})
    torch.manual_seed(0)
    return build_detector(cfg).eval()


def test_wide_models_infer_channels_last_and_give_the_same_detections():
    model = _wide_model()
    plain = _without_layout_hooks(model)
    seen = []
    conv = model.head.roi_heads.mask_head[0][0]
    conv.register_forward_hook(
        lambda m, args, out: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    with torch.no_grad():
        out = model(images)
        reference = plain(images)
    assert seen and all(seen)  # the pooled RoIs reached the mask head channels-last
    for a, b in zip(out, reference):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-4, atol=1e-4)
        assert sum(int(x.sum()) for x in a["mask_crops"]) == pytest.approx(
            sum(int(x.sum()) for x in b["mask_crops"]), rel=0.01)


def test_wide_bf16_models_cast_pooled_rois_once_and_store_channels_last_weights():
    """In bf16 the layout hook casts a pooled chunk to bf16 as it makes it channels-last
    (autocast's own cast, done once), and the hooked convolutions keep bf16 weights
    channels-last: the same detections as fp32 weights cast by autocast."""
    from cupre.models.detector import weights_for_inference

    model = _wide_model()
    model.precision = "bf16"
    seen = []
    conv = model.head.roi_heads.mask_head[0][0]
    conv.register_forward_hook(lambda m, args, out: seen.append(args[0].dtype))
    images = [torch.rand(3, 64, 96), torch.rand(3, 80, 64)]
    with torch.no_grad():
        reference = model(images)
        lean = weights_for_inference(model, "bf16")
        out = lean(images)
    assert seen and set(seen) == {torch.bfloat16}
    hooked = [m for m in lean.modules() if m._forward_pre_hooks]
    assert hooked and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in hooked)
    for a, b in zip(out, reference):
        assert len(a["boxes"]) == len(b["boxes"]) > 0
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-4)
        assert all(torch.equal(x, y) for x, y in zip(a["mask_crops"], b["mask_crops"]))


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade"])
def test_bf16_stored_weights_give_what_bf16_autocast_gives(arch):
    from cupre.models.detector import weights_for_inference

    model = _model(arch)
    model.precision = "bf16"
    images = [torch.rand(3, 64, 96)]
    with torch.no_grad():
        reference = model(images)[0]
        lean = weights_for_inference(model, "bf16")
        out = lean(images)[0]
    convs = [m for m in lean.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(m.weight.dtype == torch.bfloat16 for m in convs)
    assert not any(p.requires_grad for p in lean.parameters())
    assert len(out["boxes"]) == len(reference["boxes"]) > 0
    torch.testing.assert_close(out["boxes"], reference["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(out["scores"], reference["scores"], rtol=0, atol=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(out["mask_crops"], reference["mask_crops"]))


def test_fp32_inference_weights_stay_fp32():
    from cupre.models.detector import weights_for_inference

    model = weights_for_inference(_model("maskrcnn"), "fp32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_training_and_narrow_models_keep_nchw():
    from cupre.models.detector import nhwc_input

    narrow = _model("maskrcnn")  # 32 channels
    assert not any(m._forward_pre_hooks for m in narrow.modules())
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8)
    (kept,) = nhwc_input(conv.train(), (x,))
    assert kept is x
    (moved,) = nhwc_input(conv.eval(), (x,))
    assert moved.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("arch", ["maskrcnn", "cascade"])
def test_masks_keep_each_detections_own_class_as_torchvision_selects_it(arch):
    """Per chunk only the detection's own class's logits are kept; the probabilities equal
    torchvision's ``maskrcnn_inference`` over every class's logits (a 3-class model)."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    from cupre.models.heads.chunks import mask_logits, pooled_map
    from cupre.models.heads.maskrcnn import add_mask_probs
    from cupre.models.neck import as_feature_dict

    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "arch": arch, "num_classes": 3, "box_score_thresh": 0.0,
                                    "box_nms_thresh": 1.0, "detections_per_img": 40})
    torch.manual_seed(0)
    model = build_detector(cfg).eval()
    heads = model.head.roi_heads
    heads.chunk_size = 7
    batch, _ = model.transform([torch.rand(3, 64, 96), torch.rand(3, 80, 64)])
    with torch.no_grad():
        features = model.neck(as_feature_dict(model.backbone(batch.tensors)))
        proposals, _ = model.head.rpn(batch, features)
        detections = heads.detect_boxes(features, proposals, batch.image_sizes)
        labels = [d["labels"] for d in detections]
        assert len(torch.cat(labels).unique()) > 1  # several classes among the detections
        full = pooled_map(heads.mask_roi_pool, features, [d["boxes"] for d in detections], batch.image_sizes,
                          lambda x: mask_logits(heads.mask_predictor, heads.mask_head(x)), heads.chunk_size)
        assert full.shape[1] == 4  # background + 3 classes
        expected = maskrcnn_inference(full, labels)
        add_mask_probs(heads, features, detections, batch.image_sizes)
    for det, want in zip(detections, expected):
        assert det["masks"].shape == want.shape
        torch.testing.assert_close(det["masks"], want, rtol=0, atol=0)
