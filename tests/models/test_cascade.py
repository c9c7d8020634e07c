"""Tests for cupre.models.heads.cascade (tiny heads, random features, CPU)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import boxes as box_ops

from cupre.config import DetectorConfig
from cupre.models.heads.cascade import CascadeRoIHeads, build_cascade_roi_heads

IMAGE = 128
CHANNELS = 32
LEVELS = ["0", "1", "2", "3"]
SHAPES = [(IMAGE, IMAGE), (IMAGE, IMAGE)]


def make_heads(**overrides) -> CascadeRoIHeads:
    cfg = DetectorConfig.from_dict({"arch": "cascade", "num_classes": 2, "box_batch_size_per_image": 64, **overrides})
    return build_cascade_roi_heads(
        cfg=cfg,
        in_channels=CHANNELS,
        featmap_names=LEVELS,
        norm_layer=partial(nn.GroupNorm, 4),
        conv_dim=16,
        fc_dim=64,
        mask_dim=16,
    )


def make_features(gen: torch.Generator, batch: int = 2) -> dict[str, torch.Tensor]:
    return {name: torch.randn(batch, CHANNELS, 32 >> i, 32 >> i, generator=gen) for i, name in enumerate(LEVELS)}


def random_boxes(gen: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * (IMAGE - 40)
    wh = 8 + torch.rand(n, 2, generator=gen) * 30
    return torch.cat([xy, xy + wh], dim=1)


def make_target(gen: torch.Generator, n: int, num_classes: int = 2) -> dict[str, torch.Tensor]:
    boxes = random_boxes(gen, n)
    masks = torch.zeros(n, IMAGE, IMAGE, dtype=torch.uint8)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.round().int().tolist()):
        m[y1:y2, x1:x2] = 1
    labels = torch.randint(1, num_classes + 1, (n,), generator=gen)
    return {"boxes": boxes, "labels": labels, "masks": masks}


def make_proposals(gen: torch.Generator, target: dict[str, torch.Tensor], n: int = 40) -> torch.Tensor:
    """Random boxes plus slightly jittered GT boxes, so every stage has positives."""
    jittered = target["boxes"].repeat(3, 1) + torch.randn(3 * len(target["boxes"]), 4, generator=gen) * 0.5
    return torch.cat([random_boxes(gen, n), jittered])


def train_inputs(seed: int = 0, gt_counts=(4, 3)):
    gen = torch.Generator().manual_seed(seed)
    targets = [make_target(gen, n) for n in gt_counts]
    proposals = [make_proposals(gen, t) for t in targets]
    return make_features(gen, len(gt_counts)), proposals, targets


def box_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each box in ``a`` (N x 4), the max-coordinate distance to the nearest box in ``b``."""
    return (a[:, None] - b[None]).abs().amax(dim=-1).min(dim=1).values


def stage_keys(num_stages: int) -> set[str]:
    keys = {"loss_mask"}
    for k in range(1, num_stages + 1):
        keys |= {f"loss_classifier_stage{k}", f"loss_box_reg_stage{k}"}
    return keys


def test_training_losses_per_stage_and_gradients_reach_every_stage():
    torch.manual_seed(0)
    heads = make_heads().train()
    features, proposals, targets = train_inputs()
    result, losses = heads(features, proposals, SHAPES, targets)
    assert result == []
    assert set(losses) == stage_keys(3)
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    assert all(losses[f"loss_box_reg_stage{k}"] > 0 for k in (1, 2, 3))
    sum(losses.values()).backward()
    modules = [*heads.box_heads, *heads.box_predictors, heads.mask_head, heads.mask_predictor]
    for module in modules:
        for name, p in module.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_two_stage_config_returns_two_stages_of_losses():
    torch.manual_seed(0)
    heads = make_heads(cascade_ious=[0.5, 0.6]).train()
    assert heads.num_stages == 2
    assert [c.weights for c in heads.box_coders] == [(10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0)]
    _, losses = heads(*_train_call(train_inputs()))
    assert set(losses) == stage_keys(2)


def _train_call(inputs):
    features, proposals, targets = inputs
    return features, proposals, SHAPES[: len(proposals)], targets


@pytest.mark.parametrize("gt_counts", [(0, 3), (0, 0)])
def test_images_without_ground_truth_train(gt_counts):
    torch.manual_seed(0)
    heads = make_heads().train()
    features, proposals, targets = train_inputs(seed=1, gt_counts=gt_counts)
    proposals[0] = random_boxes(torch.Generator().manual_seed(5), 30)
    _, losses = heads(features, proposals, SHAPES, targets)
    assert set(losses) == stage_keys(3)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    if gt_counts == (0, 0):
        assert losses["loss_mask"] == 0
        assert all(losses[f"loss_box_reg_stage{k}"] == 0 for k in (1, 2, 3))


def test_eval_outputs_shapes_ranges_and_cap():
    torch.manual_seed(0)
    heads = make_heads(box_score_thresh=0.0, detections_per_img=7).eval()
    gen = torch.Generator().manual_seed(2)
    proposals = [random_boxes(gen, 50), torch.zeros(0, 4)]
    with torch.no_grad():
        detections, losses = heads(make_features(gen), proposals, SHAPES)
    assert losses == {}
    full, empty = detections
    for det in detections:
        assert set(det) == {"boxes", "labels", "scores", "masks"}
    assert full["boxes"].shape == (7, 4)
    assert full["masks"].shape == (7, 1, 28, 28)
    assert full["labels"].dtype == torch.int64 and set(full["labels"].tolist()) <= {1, 2}
    assert ((full["scores"] >= 0) & (full["scores"] <= 1)).all()
    assert ((full["masks"] >= 0) & (full["masks"] <= 1)).all()
    assert (full["boxes"] >= 0).all() and (full["boxes"] <= IMAGE).all()
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 1, 28, 28)
    assert empty["scores"].shape == (0,) and empty["labels"].shape == (0,)


def _manual_cascade(heads: CascadeRoIHeads, features, proposals):
    """Per-stage foreground probabilities and the last boxes, from the module's parts."""
    boxes, probs = proposals, []
    for k in range(heads.num_stages):
        x = heads.box_heads[k](heads.box_roi_pool(features, boxes, SHAPES[:1]))
        logits, deltas = heads.box_predictors[k](x)
        probs.append(F.softmax(logits, dim=-1)[:, 1])
        decoded = heads.box_coders[k].decode(deltas, boxes).reshape(-1, 4)
        boxes = [box_ops.clip_boxes_to_image(decoded, SHAPES[0])]
    return torch.stack(probs), boxes[0]


def test_test_time_score_is_mean_over_stages():
    torch.manual_seed(0)
    heads = make_heads(num_classes=1, box_score_thresh=0.0, box_nms_thresh=1.0, detections_per_img=1000).eval()
    for predictor in heads.box_predictors:  # make the stages disagree clearly
        nn.init.normal_(predictor.cls_score.weight, std=0.3)
    gen = torch.Generator().manual_seed(3)
    features = make_features(gen, batch=1)
    proposals = [random_boxes(gen, 30)]
    with torch.no_grad():
        (det,), _ = heads(features, proposals, SHAPES[:1])
        stage_probs, last_boxes = _manual_cascade(heads, features, proposals)
    assert len(det["boxes"]) == 30
    match = (det["boxes"][:, None] - last_boxes[None]).abs().amax(dim=-1).argmin(dim=1)
    assert torch.allclose(det["boxes"], last_boxes[match], atol=1e-5)
    assert torch.allclose(det["scores"], stage_probs.mean(dim=0)[match], atol=1e-6)
    assert (det["scores"] - stage_probs[-1][match]).abs().max() > 1e-3


def test_reset_predictors_changes_only_class_layers():
    torch.manual_seed(0)
    heads = make_heads()
    before = {k: v.clone() for k, v in heads.state_dict().items()}
    heads.reset_predictors(4)
    after = heads.state_dict()
    assert heads.num_classes == 4 and set(after) == set(before)
    class_layers = [k for k in after if "cls_score" in k or "mask_fcn_logits" in k]
    assert len(class_layers) == 2 * 3 + 2
    for key, value in after.items():
        if key in class_layers:
            assert value.shape[0] == 5, key
        else:
            assert torch.equal(value, before[key]), key
    heads.train()
    gen = torch.Generator().manual_seed(4)
    targets = [make_target(gen, 3, num_classes=4)]
    _, losses = heads(make_features(gen, 1), [make_proposals(gen, targets[0])], SHAPES[:1], targets)
    assert all(torch.isfinite(v) for v in losses.values())


def test_each_stage_trains_on_the_previous_stage_detached_boxes():
    torch.manual_seed(0)
    heads = make_heads().train()
    for predictor in heads.box_predictors:  # let the boxes move visibly between stages
        nn.init.normal_(predictor.bbox_pred.weight, std=0.05)
    pooled, deltas = [], []
    heads.box_roi_pool.register_forward_hook(lambda m, args, out: pooled.append(args[1]))
    heads.box_predictors[0].register_forward_hook(lambda m, args, out: deltas.append(out[1]))
    features, proposals, targets = train_inputs(seed=6, gt_counts=(3,))
    heads(features, proposals[:1], SHAPES[:1], targets)
    assert len(pooled) == 3
    stage1, stage2 = pooled[0][0], pooled[1][0]
    refined = heads.box_coders[0].decode(deltas[0].detach(), [stage1]).reshape(-1, 4)
    refined = box_ops.clip_boxes_to_image(refined, SHAPES[0])
    gt = targets[0]["boxes"]
    assert not stage2.requires_grad
    from_refined = box_distance(stage2, refined) < 1e-4
    from_gt = box_distance(stage2, gt) < 1e-4
    assert (from_refined | from_gt).all()
    assert from_gt.sum() == len(gt)  # GT boxes appended again at stage 2
    original = torch.cat([proposals[0], gt])
    assert (box_distance(stage2[~from_gt], original) > 1e-2).all()
