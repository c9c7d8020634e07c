"""``cupre export --format bioimageio``: bioimage.io's own libraries validate the package
and reproduce its test output with each of its weights (the state dict through cupre, and
the TorchScript program without it); the package's label image is cupre predict's."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from cupre import cli
from cupre.config import DetectorConfig
from cupre.inference.predict import PredictOptions, run_predict
from cupre.models.detector import build_detector
from cupre.train.weights import save_model
from tests.helpers import TINY_DETECTOR

pytest.importorskip("bioimageio.core")  # installed by the test extra: never skipped in the README's command


def test_the_package_passes_bioimageio_validation_and_test_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIOIMAGEIO_PERFORM_IO_CHECKS", "false")  # offline: no address is looked up
    from bioimageio.core import test_model
    from bioimageio.spec import load_description

    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "detections_per_img": 30})
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    rng = np.random.default_rng(0)
    sample = (rng.random((256, 288)) * 3000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "sample.tif", sample)
    package = tmp_path / "cupre-model.zip"
    argv = ["export", str(tmp_path / "model.safetensors"), "--format", "bioimageio", "-o", str(package),
            "--sample", str(tmp_path / "sample.tif"), "--score-threshold", "0"]
    assert cli.main(argv) == 0
    assert "bioimage.io package" in capsys.readouterr().out
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err

    descr = load_description(package, perform_io_checks=False)
    assert descr.validation_summary.status == "valid-format", descr.validation_summary.format()
    assert descr.weights.pytorch_state_dict is not None and descr.weights.torchscript is not None
    summary = test_model(descr)  # every weights format in the package
    assert summary.status == "passed", summary.format()
    assert "torchscript" in summary.format()

    # its test output is the label image cupre predict writes for the same image
    run_predict(tmp_path / "model.safetensors", [tmp_path / "sample.tif"], out=tmp_path / "out", progress=False,
                options=PredictOptions(score_threshold=0.0, device="cpu", precision="fp32"))
    expected = tifffile.imread(tmp_path / "out" / "sample_masks.tif")
    from zipfile import ZipFile

    with ZipFile(package) as zf:
        zf.extract("test_output.npy", tmp_path)
    output = np.load(tmp_path / "test_output.npy")
    assert output.shape == (1, 1, 256, 288) and output.max() > 0
    assert np.array_equal(output[0, 0], expected)
