"""The napari plugin, headless: its manifest, sample, reader and both widgets (real magicgui
Qt widgets, offscreen, their workers on Qt's event loop) on a tiny model.

The viewer is napari's ``ViewerModel``, the viewer without its canvas: napari's
``make_napari_viewer`` fixture needs an OpenGL context, and machines without a display
server (this one and CI: no Xvfb, and Qt's offscreen platform gives no OpenGL) have none.
Everything the plugin does goes through the model (layers, readers, sample data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

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


@pytest.fixture
def viewer(qtbot):
    from napari.components import ViewerModel
    from napari.plugins import _initialize_plugins

    _initialize_plugins()  # what napari.Viewer() does first: discover the installed plugins (cupre among them)
    return ViewerModel()


def test_segment_widget_adds_labels_whose_ids_match_cupre_predicts_table(viewer, qtbot, tiny_model, tmp_path):
    from cupre.napari_plugin.widgets import segment_widget

    (layer,) = viewer.open_sample("cupre", "cells")
    widget = segment_widget()
    qtbot.addWidget(widget.native)
    worker = widget(viewer=viewer, image=layer, model=tiny_model, score_threshold=0.0, object_size=0.0,
                    tile_size=1024)
    _wait(qtbot, worker)
    labels = viewer.layers["synthetic cells masks"]
    assert isinstance(labels, napari.layers.Labels)

    tifffile.imwrite(tmp_path / "cells.tif", layer.data)  # the same image through cupre predict
    run_predict(tiny_model, [tmp_path / "cells.tif"], out=tmp_path / "out", progress=False,
                options=PredictOptions(score_threshold=0.0, device="cpu"))
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
                                      object_size=0.0, tile_size=1024)
    _wait(qtbot, worker)  # an empty model field: the fine-tuned model
    assert "synthetic cells masks" in viewer.layers
