"""One object scale: a nucleus has the same size in training, evaluation and prediction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cupre.config import DetectorConfig
from cupre.data.transforms import DetectionTrainTransform
from cupre.evaluation.model_eval import predict_dataset
from cupre.inference.predict import PredictOptions, run_predict
from cupre.models.detector import build_detector
from cupre.scale import PROBE_WINDOW, at_object_scale, detect, estimated_factor, scale_factor, snap, typical_size

DIAMETER, TARGET = 12, 24


def disc_image(size: int = 96, diameter: int = DIAMETER) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (diameter / 2) ** 2
    image = torch.from_numpy(mask.astype(np.float32)).expand(3, -1, -1).clone()
    return image, torch.from_numpy(mask)[None].to(torch.uint8)


def extent(mask: torch.Tensor) -> int:
    """Side of the bounding box of the foreground of a 2-D mask."""
    ys, xs = torch.nonzero(mask > 0.5, as_tuple=True)
    return int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1


class ThresholdDetector(torch.nn.Module):
    """A detector that finds the one bright object exactly, at whatever size it is fed.

    It records the size of that object in every input it sees, so the test reads the
    scale each code path feeds to a model with ``object_size`` set.
    """

    def __init__(self, object_size: float) -> None:
        super().__init__()
        self.object_size = object_size
        self.seen: list[int] = []

    def forward(self, images, targets=None, *, scales=None):
        from cupre.scale import resize_image

        outputs = []
        for k, image in enumerate(images):
            f = 1.0 if scales is None else scales[k]
            fed = resize_image(image, f)[0]
            self.seen.append(extent(fed))
            mask = image[0] > 0.5  # reported in the input's own pixels, as the detector does
            ys, xs = torch.nonzero(mask, as_tuple=True)
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            outputs.append({"boxes": box, "scores": torch.ones(1), "labels": torch.ones(1, dtype=torch.int64),
                            "masks": mask[None].to(torch.uint8)})
        return outputs


def test_rule_pieces():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 20, 20], [0, 0, 30, 30]], dtype=torch.float32)
    assert typical_size(boxes) == pytest.approx(20.0)
    assert typical_size(torch.zeros(0, 4)) is None
    assert scale_factor(24, 12) == 2.0 and scale_factor(24, 1) == 4.0 and scale_factor(None, 12) == 1.0
    assert snap(1.1) == 1.0 and snap(1.3) == 1.3
    assert estimated_factor(24, boxes[:1], torch.tensor([0.2])) == 1.0  # nothing confident: native pixels
    assert estimated_factor(40, boxes, torch.tensor([0.9, 0.9, 0.9])) == 2.0


def test_one_object_has_the_same_size_in_training_evaluation_and_prediction(tmp_path):
    image, mask = disc_image(size=32)  # a 32 px window at factor 2 is the whole 64 px crop
    target = {"boxes": torch.tensor([[10.0, 10.0, 22.0, 22.0]]), "labels": torch.ones(1, dtype=torch.int64),
              "masks": mask, "image_id": 1}

    # training: the crop that reaches the detector holds the nucleus at the model's object size
    torch.manual_seed(0)
    crop, out = DetectionTrainTransform(crop_size=64, object_size=TARGET, flips=False, rot90=False,
                                        intensity=False)(image, target)
    assert crop.shape[-2:] == (64, 64)
    assert abs(extent(out["masks"][0]) - TARGET) <= 1
    cfg = DetectorConfig.from_dict({"backbone": "resnet18", "fpn_channels": 32, "object_size": TARGET})
    model = build_detector(cfg).train()
    fed = []
    model.backbone.register_forward_hook(lambda m, args, o: fed.append(tuple(args[0].shape[-2:])))
    model([crop], [{k: out[k] for k in ("boxes", "labels", "masks")}])
    assert fed == [(64, 64)]  # the detector does not resize what training feeds it

    # evaluation: the model's own looks at 1x and 2x find the object at each (equal score: the native
    # look counts; a 32 px image is too small for a look at 0.5x), it measures 12 px, so the final
    # pass is the look at 2x (24 px)
    detector = ThresholdDetector(TARGET)

    class OneImage(torch.utils.data.Dataset):
        categories = [{"id": 1, "name": "cell"}]

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return image, target

    results = predict_dataset(detector, OneImage(), device=torch.device("cpu"))
    assert detector.seen == [DIAMETER, TARGET]
    detector.seen.clear()  # the benchmarks' other two ways: one native look, and the labels' own size
    predict_dataset(detector, OneImage(), device=torch.device("cpu"), probe_factors=(1.0,))
    predict_dataset(detector, OneImage(), device=torch.device("cpu"), scale="labels")
    assert detector.seen == [DIAMETER, TARGET, TARGET]
    assert results[0]["bbox"] == pytest.approx([10, 10, 12, 12])  # reported in the image's own pixels

    # prediction: the same rule, whether the size is estimated or given by the user
    Image.fromarray((image[0].numpy() * 255).astype(np.uint8)).save(tmp_path / "nucleus.png")
    detector.seen.clear()
    run_predict(detector, [tmp_path / "nucleus.png"], out=tmp_path / "auto", options=PredictOptions(device="cpu"),
                progress=False)
    assert detector.seen == [DIAMETER, TARGET]
    detector.seen.clear()
    run_predict(detector, [tmp_path / "nucleus.png"], out=tmp_path / "given", progress=False,
                options=PredictOptions(device="cpu", diameter=DIAMETER))
    assert detector.seen == [TARGET]


class SizeSelectiveDetector(ThresholdDetector):
    """Finds the bright object only where it measures within 1.5x of its object size, as a
    weakly trained model does."""

    def forward(self, images, targets=None, *, scales=None):
        outputs = super().forward(images, targets, scales=scales)
        for out, fed in zip(outputs, self.seen[-len(outputs):]):
            if not self.object_size / 1.5 <= fed <= self.object_size * 1.5:
                out["scores"] = torch.zeros(1)
        return outputs


def test_an_image_of_large_objects_is_found_by_the_look_at_half_size():
    image, _ = disc_image(size=160, diameter=2 * TARGET)  # 48 px: nothing confident at native pixels
    detector = SizeSelectiveDetector(TARGET)
    outputs, factors = detect(detector, [image])
    assert detector.seen == [2 * TARGET, TARGET, 4 * TARGET]  # the looks at 1x, 0.5x, 2x; the final pass is 0.5x's
    assert factors == [0.5] and float(outputs[0]["scores"][0]) == 1.0
    assert outputs[0]["boxes"][0].tolist() == pytest.approx([56, 56, 104, 104])  # in the image's own pixels


def test_looks_above_native_see_the_central_window_only():
    calls = []

    def run(batch, scales):
        calls.append(([tuple(b.shape[-2:]) for b in batch], scales))
        return [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0)} for _ in batch]

    _, factors = at_object_scale(run, [torch.zeros(3, 600, 800)], 20.0)
    assert calls == [([(600, 800)], None), ([(600, 800)], [0.5]), ([(PROBE_WINDOW, PROBE_WINDOW)], [2.0])]
    assert factors == [1.0]  # nothing found: native pixels, the first look's output (no fourth pass)
    calls.clear()
    at_object_scale(run, [torch.zeros(3, 600, 800)], 20.0, crop=None)  # whole-slide images: no look at 2x
    assert [c[1] for c in calls] == [None, [0.5]]
    calls.clear()
    at_object_scale(run, [torch.zeros(3, 100, 100)], 20.0)  # a look at 0.5x would feed 50 px: left out
    assert [c[1] for c in calls] == [None, [2.0]]


def test_model_files_store_the_object_size(tmp_path):
    from cupre.models.loading import build_from_file
    from cupre.train.weights import save_model

    cfg = DetectorConfig.from_dict({"backbone": "resnet18", "fpn_channels": 32, "object_size": 20})
    save_model(tmp_path / "m.pt", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    model, loaded, _ = build_from_file(tmp_path / "m.pt")
    assert loaded.object_size == 20 and model.object_size == 20


def test_scale_jitter_varies_the_factor_around_the_object_scale():
    transform = DetectionTrainTransform(crop_size=96, object_size=TARGET, scale_jitter=1.5)
    boxes = torch.tensor([[74.0, 74.0, 86.0, 86.0]])
    factors = []
    for seed in range(20):
        torch.manual_seed(seed)
        factors.append(transform.factor(boxes))
    assert all(2 / 1.5 - 1e-6 <= f <= 2 * 1.5 + 1e-6 for f in factors)  # object scale 24 / 12, jittered
    assert min(factors) < 1.8 and max(factors) > 2.2
