"""``cupre predict --workers N``: a local Dask cluster writes what one process writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from cupre import cli
from cupre.config import DetectorConfig
from cupre.models.detector import build_detector
from cupre.train.weights import save_model
from tests.data.test_lazy import write_ome_zarr
from tests.helpers import TINY_DETECTOR

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def local_cluster():
    """A local cluster of two workers as ``--workers 2`` makes it, shared by the tests that
    send it work through ``--cluster`` (each start imports torch in every worker: seconds)."""
    from types import SimpleNamespace

    from cupre.inference.cluster import _client

    client, cluster = _client(SimpleNamespace(cluster=None, workers=2))
    yield client
    client.close()
    cluster.close()


def test_two_workers_write_the_same_files_as_one_process(tmp_path, capsys, local_cluster):
    import torch

    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "detections_per_img": 20})
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    for k, (h, w) in enumerate([(64, 64), (80, 96), (150, 120), (64, 64), (72, 40)]):  # the third is tiled
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(folder / f"img{k}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    # large images read a tile at a time: a tiled TIFF and an OME-Zarr, their tiles spread over the workers
    tifffile.imwrite(folder / "slide.tif", rng.integers(0, 4000, (260, 230), dtype=np.uint16), tile=(64, 64))
    write_ome_zarr(folder / "plate.zarr", rng.integers(0, 255, (2, 200, 180), dtype=np.uint8), "cyx")
    common = [str(tmp_path / "model.safetensors"), str(folder), "--score-threshold", "0", "--device", "cpu",
              "--batch-size", "2", "--tile-size", "96", "--tile-overlap", "16", "--threads", "1"]
    assert cli.main(["predict", *common, "-o", str(tmp_path / "one")]) == 1  # the broken file fails
    assert cli.main(["predict", *common, "-o", str(tmp_path / "two"), "--cluster", local_cluster.scheduler.address]) == 1
    assert "broken.png" in capsys.readouterr().err

    labels = sorted(p.name for p in (tmp_path / "one").glob("*_masks.tif"))
    assert len(labels) == 8 and "plate_p001_masks.tif" in labels
    assert labels == sorted(p.name for p in (tmp_path / "two").glob("*_masks.tif"))
    counted = 0
    for name in labels:
        one, two = tifffile.imread(tmp_path / "one" / name), tifffile.imread(tmp_path / "two" / name)
        assert np.array_equal(one, two)
        counted += int(one.max())
        csv = name.replace("_masks.tif", "_objects.csv")
        assert (tmp_path / "one" / csv).read_text() == (tmp_path / "two" / csv).read_text()
    assert counted > 20  # the untrained model at score 0 does find objects
    for run_file in ("results_coco.json", "images.json"):
        assert json.loads((tmp_path / "one" / run_file).read_text()) == \
            json.loads((tmp_path / "two" / run_file).read_text())


def test_workers_and_cluster_together_are_refused(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"")
    code = cli.main(["predict", str(tmp_path / "model.safetensors"), str(tmp_path), "-o", str(tmp_path / "o"),
                     "--workers", "2", "--cluster", "tcp://127.0.0.1:1"])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_a_bf16_model_goes_to_the_workers(tmp_path, local_cluster):
    """What --precision auto gives on a CPU with bf16 units: bf16-stored weights, which
    Dask's own tensor serialiser cannot send."""
    import torch

    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "detections_per_img": 20})
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    rng = np.random.default_rng(1)
    tifffile.imwrite(tmp_path / "slide.tif", rng.integers(0, 4000, (200, 150), dtype=np.uint16), tile=(64, 64))
    common = [str(tmp_path / "model.safetensors"), str(tmp_path / "slide.tif"), "--score-threshold", "0",
              "--device", "cpu", "--tile-size", "96", "--tile-overlap", "16", "--threads", "1", "--precision", "bf16"]
    assert cli.main(["predict", *common, "-o", str(tmp_path / "one")]) == 0
    assert cli.main(["predict", *common, "-o", str(tmp_path / "two"), "--cluster", local_cluster.scheduler.address]) == 0
    one, two = (tifffile.imread(tmp_path / run / "slide_masks.tif") for run in ("one", "two"))
    assert np.array_equal(one, two) and one.max() > 0


def _loads_triton() -> bool:
    import sys

    import cupre.inference.predict  # noqa: F401 - what a task unpickles: torchvision, and triton with it

    return sys.modules.get("triton") is not None


def test_local_workers_keep_the_gpu_compiler_out(local_cluster):
    """Each local worker preloads cupre's setup, so torchvision's import brings no triton
    (75 MiB per worker) where there is no GPU."""
    import importlib.util

    import torch

    if importlib.util.find_spec("triton") is None or torch.cuda.is_available():
        pytest.skip("triton is not installed, or a GPU is there (then it is kept)")
    workers = list(local_cluster.scheduler_info()["workers"])
    assert len(workers) == 2
    assert all(local_cluster.submit(_loads_triton, pure=False, workers=[w]).result() is False for w in workers)
