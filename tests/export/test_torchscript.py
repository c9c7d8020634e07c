"""``cupre export --format torchscript``: the scripted inference (raw image in, label image
out) gives cupre predict's label image, pixel for pixel, at native pixels, at an estimated
object scale and at a given one; the file loads with ``torch.jit.load`` alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from cupre import cli
from cupre.config import DetectorConfig
from cupre.data.synth_cells import render
from cupre.export.torchscript import image_batch, percentile, scriptable
from cupre.inference.arrays import segment_array
from cupre.inference.options import DetectionOptions
from cupre.inference.predict import PredictOptions, run_predict
from cupre.models.detector import build_detector
from cupre.train.weights import save_model
from tests.helpers import TINY_DETECTOR

CPU = torch.device("cpu")


def _net(**changes):
    torch.manual_seed(0)
    return build_detector(DetectorConfig.from_dict({**TINY_DETECTOR, **changes})).eval()


def test_percentile_is_numpys():
    a = np.random.default_rng(0).random((300, 200)).astype(np.float32) * 1000
    a[0, :7] = a[0, 0]  # ties
    for q in (1.0, 50.0, 99.8):
        assert percentile(torch.from_numpy(a), q) == np.percentile(a, q)


@pytest.mark.parametrize("changes, given", [
    ({}, None),  # the tiny model has no object size: native pixels, one pass
    ({"object_size": 6.0, "fpn_channels": 128, "norm": "frozen_bn"}, None),  # estimated factor; channels-last
    ({"object_size": 30.0}, 12.0),  # a given object size
    ({"invert_bright": True}, None),  # a bright background inverted, as the detector's transform does
])
def test_scripted_labels_equal_cupre_predicts(changes, given):
    net = _net(**changes)
    rgb = render(np.random.default_rng(0), size=256, index=1, seed=0).image
    grey = (np.random.default_rng(1).random((200, 232)) * 3000).astype(np.uint16)
    bright = 255 - rgb  # a bright background
    scripted = torch.jit.script(scriptable(net, DetectionOptions(score_threshold=0.0, diameter=given)))
    for raw in (rgb, grey, bright):
        want, _, factor = segment_array(net, raw, device=CPU, precision="fp32",
                                        options=DetectionOptions(score_threshold=0.0, diameter=given))
        got = scripted(image_batch(raw))
        assert got.shape == (1, 1, *raw.shape[:2]) and got.dtype == torch.int32
        assert want.max() > 0 and np.array_equal(got[0, 0].numpy(), want)
        if "object_size" in changes:
            assert factor != 1.0  # the second pass, at the object scale, was taken
    batch = scripted(torch.stack([image_batch(grey)[0], image_batch(grey)[0]]))
    assert batch.shape == (2, 1, *grey.shape) and torch.equal(batch[0], batch[1])


def test_cli_writes_a_file_that_torch_alone_loads_and_that_matches_predict(tmp_path, capsys):
    cfg = DetectorConfig.from_dict(TINY_DETECTOR)
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    image = (np.random.default_rng(2).random((240, 256)) * 4000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    argv = ["export", str(tmp_path / "model.safetensors"), "--format", "torchscript", "-o", str(tmp_path / "m.pt"),
            "--score-threshold", "0.1"]
    assert cli.main(argv) == 0
    assert "TorchScript model" in capsys.readouterr().out
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err

    files = {"cupre.json": ""}
    loaded = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=files)
    assert json.loads(files["cupre.json"])["score_threshold"] == 0.1
    run_predict(tmp_path / "model.safetensors", [tmp_path / "cells.tif"], out=tmp_path / "out", progress=False,
                options=PredictOptions(score_threshold=0.1, device="cpu", precision="fp32"))
    expected = tifffile.imread(tmp_path / "out" / "cells_masks.tif")
    got = loaded(torch.from_numpy(image.astype(np.float32))[None, None])[0, 0].numpy()
    assert expected.max() > 0 and np.array_equal(got, expected)


def test_cascade_heads_are_refused_with_the_reason():
    from cupre.errors import CupreError

    with pytest.raises(CupreError, match="Cascade"):
        scriptable(_net(arch="cascade"))
