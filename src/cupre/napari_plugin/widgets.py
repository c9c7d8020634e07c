"""The plugin's two widgets (magicgui), each running its work in a worker thread.

*Segment cells* runs a model on the selected image layer and adds (or replaces) the
Labels layer ``<image> masks``; with its model field empty it runs the model the last
fine-tuning wrote, else cupre's shipped nuclei model (:mod:`cupre.shipped`; typing
``nuclei`` names it too); *Fine-tune* trains the model further on an image layer
and the Labels layer painted or corrected on it (``cupre finetune --from-model``) and
points *Segment cells* at the model it writes, so predict -> correct -> fine-tune ->
predict runs inside napari. The work itself is plain cupre
(:func:`cupre.inference.arrays.segment_array`, :func:`cupre.train.finetune.run_finetune`);
these functions only move layers in and out.
"""

import importlib.util
import os
import sys
import tempfile  # no "from __future__ import annotations": magicgui reads the annotations as types
from pathlib import Path

import numpy as np
import tifffile
from magicgui import magic_factory
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_info
from napari.viewer import Viewer

from cupre.inference.options import DEFAULTS, DetectionOptions
from cupre.napari_plugin.features import features_table
from cupre.shipped import available, is_shipped_name

MODEL_FILTER = "*.safetensors"
LAST_MODEL: dict[str, Path] = {}  # the model the last fine-tuning wrote, for Segment cells
SHIPPED_HERE = available()  # the shipped models this install holds: the first is the empty field's
MODEL_LABEL = f"model file (empty: {SHIPPED_HERE[0]}, shipped)" if SHIPPED_HERE else "model file"


def chosen_model(model: Path, *, last: bool = True) -> Path | str:
    """What a widget's model field names: a model file or run folder, or a shipped model's
    name typed in (``nuclei``); left empty, the model the last fine-tuning wrote (``last``),
    else the first shipped model this install holds."""
    if model not in (Path(), Path(".")):
        return str(model) if is_shipped_name(str(model)) else model
    if last and "path" in LAST_MODEL:
        return LAST_MODEL["path"]
    if SHIPPED_HERE:
        return SHIPPED_HERE[0]
    from cupre.errors import CupreError

    raise CupreError("no model chosen: pick a model file (this install holds no shipped model)")


def load_triton_apart() -> None:
    """Load triton (which torchvision's import pulls in, where installed) with its own LLVM
    symbols bound to itself, before anything imports it in napari's process.

    napari's canvas has usually loaded OpenGL by then; on Mesa (software rendering, AMD and
    virtual machines) that brings Mesa's LLVM, and triton's library, loaded after it, binds
    to Mesa's LLVM symbols and crashes the process (seen under Xvfb: a segmentation fault on
    the first Segment). ``RTLD_DEEPBIND`` makes triton resolve its own symbols first. A no-op
    where triton is absent, already loaded, or the platform has no such flag.
    """
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    if not deepbind or "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return
    flags = sys.getdlopenflags()
    sys.setdlopenflags(flags | deepbind)
    try:
        import triton  # noqa: F401
    except Exception:  # a broken triton is torch's business, not a reason to stop here
        pass
    finally:
        sys.setdlopenflags(flags)


def segment_layer(data: np.ndarray, model: Path | str, options: DetectionOptions = DEFAULTS,
                  device: str = "auto") -> tuple[np.ndarray, list[dict]]:
    """The label image and object table of one image array (what the widget runs)."""
    from cupre.devices import pick_device, resolve_precision
    from cupre.inference.arrays import segment_array
    from cupre.inference.predict import load_model

    where = pick_device(device)
    precision = resolve_precision("auto", where)
    net, categories = load_model(model, device=where, precision=precision)
    label, rows, _ = segment_array(net, data, device=where, categories=categories, options=options,
                                   precision=precision)
    return label, rows


def _add_masks(viewer: Viewer, name: str, label: np.ndarray, rows: list[dict]) -> Labels:
    if name in viewer.layers:
        viewer.layers.remove(name)
    return viewer.add_labels(label, name=name, features=features_table(rows))


@magic_factory(
    call_button="Segment",
    model={"label": MODEL_LABEL, "filter": MODEL_FILTER,
           "tooltip": "model.safetensors (or its run folder), or a shipped model's name (nuclei); empty: the model "
                      "the last fine-tuning wrote, else cupre's shipped nuclei model"},
    score_threshold={"min": 0.0, "max": 1.0, "step": 0.05,
                     "tooltip": "keep detections scoring above this; 0: the threshold validated with the model"},
    diameter={"min": 0.0, "max": 2000.0, "tooltip": "typical cell diameter in pixels; 0: estimated by the model"},
    tile_size={"min": 64, "max": 8192, "step": 64, "tooltip": "larger images are predicted in tiles of this size"},
)
def segment_widget(viewer: Viewer, image: Image, model: Path = Path(),
                   score_threshold: float = 0.0, diameter: float = 0.0,
                   tile_size: int = DEFAULTS.tile_size):  # no return annotation: magicgui leaves it be
    """Segment the image layer; adds the Labels layer ``<image> masks`` with its features.
    Returns the started worker (FunctionWorker)."""
    model = chosen_model(model)
    data = np.asarray(image.data)
    load_triton_apart()

    @thread_worker(progress={"total": 0, "desc": "cupre: segmenting"})
    def work():
        options = DetectionOptions(score_threshold=score_threshold or None, diameter=diameter or None,
                                   tile_size=tile_size)
        return segment_layer(data, model, options)

    worker = work()
    worker.returned.connect(lambda result: _add_masks(viewer, f"{image.name} masks", *result))
    worker.start()
    return worker


def finetune_on_layers(image: np.ndarray, labels: np.ndarray, model: Path | str, out: Path, *, iterations: int,
                       device: str = "auto") -> Path:
    """Fine-tune ``model`` further on one image and its label image; returns the new
    model file (``out/model.safetensors``)."""
    from cupre.config import FinetuneConfig
    from cupre.train.finetune import run_finetune

    with tempfile.TemporaryDirectory(prefix="cupre-napari-") as folder:
        tifffile.imwrite(Path(folder) / "layer.tif", image)
        tifffile.imwrite(Path(folder) / "layer_masks.tif", labels.astype(np.uint32))
        batch = 2
        cfg = FinetuneConfig.from_dict({"from_model": str(model), "train": folder, "device": device,
                                        "optim": {"iterations": iterations, "batch_size": batch,
                                                  "warmup_iterations": min(20, iterations // 5)},
                                        "checkpoint_every": max(1, iterations // 4)}, where="napari fine-tune")
        run_finetune(cfg, out)
    return out / "model.safetensors"


@magic_factory(
    call_button="Fine-tune",
    model={"label": MODEL_LABEL, "filter": MODEL_FILTER,
           "tooltip": "the model to train further: model.safetensors (or its run folder), or a shipped model's name "
                      "(nuclei); empty: cupre's shipped nuclei model"},
    out={"label": "new run folder", "mode": "d", "tooltip": "an empty or new folder for the fine-tuned model"},
    iterations={"min": 1, "max": 10000, "tooltip": "training steps (about 1 s each on a laptop CPU)"},
)
def finetune_widget(viewer: Viewer, image: Image, labels: Labels, model: Path = Path(), out: Path = Path(),
                    iterations: int = 100):
    """Fine-tune the model on the image and its (corrected) labels. Returns the started
    worker (FunctionWorker)."""
    data, painted = np.asarray(image.data), np.asarray(labels.data)
    load_triton_apart()

    @thread_worker(progress={"total": 0, "desc": "cupre: fine-tuning"})
    def work():
        return finetune_on_layers(data, painted, chosen_model(model, last=False), out, iterations=iterations)

    def done(path: Path) -> None:
        LAST_MODEL["path"] = path
        show_info(f"cupre: fine-tuned model written to {path}; Segment cells uses it when its model is empty")

    worker = work()
    worker.returned.connect(done)
    worker.start()
    return worker
