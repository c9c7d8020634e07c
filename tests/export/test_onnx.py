"""``cupre export --format onnx``: the detector network in ONNX; onnxruntime gives the
PyTorch model's detections at any image size, and cupre's own detector gives the same
boxes and scores; what stays outside ONNX is written in the model's metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cupre import cli
from cupre.config import DetectorConfig
from cupre.data.imageio import normalize
from cupre.inference.options import DetectionOptions
from cupre.inference.predict import detection_limits
from cupre.models.detector import build_detector
from cupre.train.weights import save_model
from tests.helpers import TINY_DETECTOR

onnx = pytest.importorskip("onnx")  # installed by the test extra: never skipped in the README's command
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.mark.parametrize("invert_bright", [False, True])
def test_onnx_detections_equal_cupres_at_any_size(tmp_path, capsys, invert_bright):
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "object_size": 12.0, "invert_bright": invert_bright})
    torch.manual_seed(0)
    net = build_detector(cfg).eval()
    save_model(tmp_path / "model.safetensors", net, cfg, [{"id": 1, "name": "cell"}])
    argv = ["export", str(tmp_path / "model.safetensors"), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
            "--score-threshold", "0"]
    assert cli.main(argv) == 0
    assert "ONNX detector" in capsys.readouterr().out

    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["cupre.object_size"] == 12.0 and props["cupre.pixel_offset"] == 0.25
    assert props["cupre.normalisation_percentiles"] == [1.0, 99.8]
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    for height, width in ((200, 232), (256, 160)):  # neither is the size it was exported at
        raw = (rng.random((height, width)) ** 3 * 3000).astype(np.uint16)  # a dark background
        if invert_bright and height == 256:
            raw = 3000 - raw  # a bright one: the exported graph keeps the detector's inversion
        image = normalize(raw)
        boxes, scores, labels, masks = session.run(None, {"image": image[None].numpy()})
        with torch.no_grad(), detection_limits(net, DetectionOptions(score_threshold=0.0)):
            (want,) = net([image])  # cupre's detector at native pixels, with the export's limits
        assert len(boxes) == len(want["boxes"]) == masks.shape[0] > 0 and masks.shape[1:] == (28, 28)
        np.testing.assert_allclose(boxes, want["boxes"].numpy(), atol=1e-2)
        np.testing.assert_allclose(scores, want["scores"].numpy(), atol=1e-4)
        assert np.array_equal(labels, want["labels"].numpy())
        assert masks.min() >= 0 and masks.max() <= 1  # probabilities
