"""The napari plugin: its manifest, sample, reader and both widgets (real magicgui Qt
widgets, their workers on Qt's event loop) on a tiny model, in napari's own viewer.

The viewer comes from napari's ``make_napari_viewer`` fixture, which needs OpenGL: ``make
test`` runs the suite on a virtual display (Xvfb with Mesa's software OpenGL; see
``tools/display-deps``) and there the real viewer is required. Run by hand with no display,
these tests fall back to ``ViewerModel``, the viewer without its canvas (Qt's offscreen
platform has no OpenGL), and the screenshot test is skipped."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage

from cupre.config import DetectorConfig
from cupre.inference.predict import PredictOptions, run_predict
from cupre.models.detector import build_detector
from cupre.train.weights import save_model
from tests.helpers import TINY_DETECTOR

napari = pytest.importorskip("napari")  # installed by the test extra: never skipped in the README's command


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    cfg = DetectorConfig.from_dict({**TINY_DETECTOR, "detections_per_img": 30})
    torch.manual_seed(0)
    save_model(tmp_path / "model.safetensors", build_detector(cfg), cfg, [{"id": 1, "name": "cell"}])
    return tmp_path / "model.safetensors"


def test_the_manifest_is_valid_and_registered():
    import importlib.metadata

    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("cupre")
    manifest.validate_imports()  # every command's python_name imports
    assert {w.display_name for w in manifest.contributions.widgets} == {"Segment cells", "Fine-tune"}
    assert any(e.value == "cupre.napari_plugin:napari.yaml"
               for e in importlib.metadata.entry_points(group="napari.manifest"))


def _wait(qtbot, worker) -> None:
    with qtbot.waitSignal(worker.finished, timeout=300_000):
        pass


def has_display() -> bool:
    if os.environ.get("DISPLAY"):
        return True
    if os.environ.get("CUPRE_TEST_DISPLAY"):  # make test started Xvfb: never fall back silently
        pytest.fail("CUPRE_TEST_DISPLAY is set but DISPLAY is not: the virtual display did not start")
    return False


@pytest.fixture
def viewer(request, qtbot):
    if has_display():
        return request.getfixturevalue("make_napari_viewer")(show=True)  # a hidden canvas draws nothing
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what napari.Viewer() does first: discover the installed plugins (cupre among them)
    return ViewerModel()


def test_segment_widget_adds_labels_whose_ids_match_cupre_predicts_table(viewer, qtbot, tiny_model, tmp_path):
    from cupre.napari_plugin.widgets import segment_widget

    (layer,) = viewer.open_sample("cupre", "cells")
    widget = segment_widget()
    qtbot.addWidget(widget.native)
    worker = widget(viewer=viewer, image=layer, model=tiny_model, score_threshold=0.01, diameter=0.0,
                    tile_size=1024)  # 0 would be the model's own validated threshold
    _wait(qtbot, worker)
    labels = viewer.layers["synthetic cells masks"]
    assert isinstance(labels, napari.layers.Labels)

    tifffile.imwrite(tmp_path / "cells.tif", layer.data)  # the same image through cupre predict
    run_predict(tiny_model, [tmp_path / "cells.tif"], out=tmp_path / "out", progress=False,
                options=PredictOptions(score_threshold=0.01, device="cpu"))
    assert np.array_equal(labels.data, tifffile.imread(tmp_path / "out" / "cells_masks.tif"))
    with open(tmp_path / "out" / "cells_objects.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = np.unique(labels.data[labels.data > 0])
    assert len(rows) == len(ids) > 0
    features = labels.features
    assert features["id"].tolist() == [0] + [int(r["id"]) for r in rows] == [0] + ids.tolist()
    assert features["area"].tolist()[1:] == [int(r["area"]) for r in rows]
    assert features["score"].tolist()[1:] == pytest.approx([float(r["score"]) for r in rows])

    # the reader opens the files cupre predict wrote: the same labels, the CSV as features
    (opened,) = viewer.open(tmp_path / "out" / "cells_masks.tif", plugin="cupre")
    assert np.array_equal(opened.data, labels.data)
    assert opened.features["id"].tolist() == features["id"].tolist()


def test_finetune_widget_writes_a_model_that_segment_then_uses(viewer, qtbot, tiny_model, tmp_path):
    from cupre.napari_plugin import widgets

    (image,) = viewer.open_sample("cupre", "cells")
    from cupre.data.synth_cells import render

    truth = render(np.random.default_rng(0), size=256, index=1, seed=0).labels  # the "corrected" labels
    painted = viewer.add_labels(truth, name="corrected")
    tune = widgets.finetune_widget()
    worker = tune(viewer=viewer, image=image, labels=painted, model=tiny_model, out=tmp_path / "tuned",
                  iterations=2)
    _wait(qtbot, worker)
    new_model = tmp_path / "tuned" / "model.safetensors"
    assert new_model.is_file() and widgets.LAST_MODEL["path"] == new_model
    worker = widgets.segment_widget()(viewer=viewer, image=image, model=Path(), score_threshold=0.0,
                                      diameter=0.0, tile_size=1024)
    _wait(qtbot, worker)  # an empty model field: the fine-tuned model
    assert "synthetic cells masks" in viewer.layers


def test_the_viewer_draws_the_labels_the_widget_adds(viewer, qtbot, tiny_model):
    """On the real viewer (OpenGL canvas), the widget docks and its Labels layer is drawn."""
    if not has_display():
        pytest.skip("no display: napari's canvas needs OpenGL (make test provides Xvfb)")
    from cupre.napari_plugin.widgets import segment_widget

    (image,) = viewer.open_sample("cupre", "cells")
    widget = segment_widget()
    viewer.window.add_dock_widget(widget, name="Segment cells")
    _wait(qtbot, widget(viewer=viewer, image=image, model=tiny_model, score_threshold=0.01, diameter=0.0,
                        tile_size=1024))
    labels = viewer.layers["synthetic cells masks"]
    image.visible = False
    viewer.reset_view()  # fit the image to the canvas the dock widget narrowed
    drawn = viewer.screenshot(canvas_only=True, flash=False)
    labels.visible = False
    empty = viewer.screenshot(canvas_only=True, flash=False)
    coloured = np.abs(drawn[..., :3].astype(int) - empty[..., :3].astype(int)).sum(-1) > 0
    # each coloured screen pixel, through the camera, lands on (or next to) a labelled pixel,
    # and nearly every object is drawn
    rows, cols = np.nonzero(coloured)
    height, width = coloured.shape
    (cy, cx), zoom = viewer.camera.center[-2:], viewer.camera.zoom
    y = np.round(cy + (rows + 0.5 - height / 2) / zoom).astype(int)
    x = np.round(cx + (cols + 0.5 - width / 2) / zoom).astype(int)
    assert len(y) > 0 and y.min() >= 0 and x.min() >= 0
    near = ndimage.binary_dilation(labels.data > 0)
    assert near[y, x].mean() > 0.95
    drawn_at = np.zeros(labels.data.shape, bool)
    drawn_at[y, x] = True
    ids = np.unique(labels.data[labels.data > 0])
    assert np.isin(ids, labels.data[ndimage.binary_dilation(drawn_at)]).mean() > 0.9
    window = viewer.screenshot(canvas_only=False, flash=False)
    assert window.shape[1] > drawn.shape[1]  # the dock widget beside the canvas


def test_segment_runs_in_a_napari_process_that_drew_first(tiny_model, tmp_path):
    """The user's order: napari's canvas (OpenGL) first, torch on the first Segment. On Mesa
    this loaded triton after Mesa's LLVM and crashed the process; the widget now loads
    triton apart (``load_triton_apart``). Runs the screenshot tool in a fresh process."""
    if not has_display():
        pytest.skip("no display: napari's canvas needs OpenGL (make test provides Xvfb)")
    import subprocess
    import sys

    from cupre.napari_plugin.sample import synthetic_cells

    ((image, _, _),) = synthetic_cells()
    tifffile.imwrite(tmp_path / "cells.tif", image)
    tool = Path(__file__).resolve().parents[2] / "tools" / "napari_screenshot.py"
    done = subprocess.run([sys.executable, str(tool), str(tiny_model), str(tmp_path / "cells.tif"),
                           "-o", str(tmp_path / "shot.png"), "--score-threshold", "0.01"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "objects in" in done.stdout
    shot = iio.imread(tmp_path / "shot.png")
    assert shot.shape[0] >= 800 and shot.shape[1] >= 1200  # the whole window, widget docked


def test_an_empty_model_field_segments_with_the_shipped_model(viewer, qtbot, tmp_path, monkeypatch):
    """The shipped nuclei model comes first: an empty model field (no fine-tuning yet) runs
    it, and typing ``nuclei`` names it; without it in the install, an empty field is one line."""
    import cupre.models.loading
    from cupre.errors import CupreError
    from cupre.napari_plugin import widgets
    from tests.helpers import install_shipped_model

    shipped = install_shipped_model(monkeypatch, tmp_path / "package")
    monkeypatch.setattr(widgets, "SHIPPED_HERE", ["nuclei"])
    monkeypatch.setattr(widgets, "LAST_MODEL", {})
    files, build = [], cupre.models.loading.build_from_file
    monkeypatch.setattr(cupre.models.loading, "build_from_file",
                        lambda path, **kw: files.append(path) or build(path, **kw))
    (image,) = viewer.open_sample("cupre", "cells")
    for field in (Path(), Path("nuclei")):
        worker = widgets.segment_widget()(viewer=viewer, image=image, model=field, score_threshold=0.0,
                                          diameter=0.0, tile_size=1024)
        _wait(qtbot, worker)
    assert files == [shipped, shipped] and "synthetic cells masks" in viewer.layers
    assert widgets.chosen_model(tmp_path / "mine.safetensors") == tmp_path / "mine.safetensors"
    monkeypatch.setattr(widgets, "LAST_MODEL", {"path": tmp_path / "tuned.safetensors"})
    assert widgets.chosen_model(Path()) == tmp_path / "tuned.safetensors"  # Segment: the last fine-tuned first
    assert widgets.chosen_model(Path(), last=False) == "nuclei"  # Fine-tune: from the shipped model
    monkeypatch.setattr(widgets, "SHIPPED_HERE", [])
    with pytest.raises(CupreError, match="no model chosen: pick a model file"):
        widgets.chosen_model(Path(), last=False)
