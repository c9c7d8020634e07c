"""A screenshot of the napari plugin at work: an image opened in napari's viewer, the
*Segment cells* widget docked and run on it with a model, the Labels layer it adds drawn.

Needs a display; on a machine without one, run it on Xvfb (``tools/display-deps``
installs it)::

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/napari_screenshot.py \\
        MODEL IMAGE -o napari.png

Prints the number of objects, the time the widget took and where the picture went.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtCore import QEventLoop

from cupre.napari_plugin.widgets import segment_widget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("image", type=Path)
    parser.add_argument("-o", "--out", type=Path, default=Path("napari.png"))
    parser.add_argument("--score-threshold", type=float, default=0.0, help="0: the model's own validated threshold")
    args = parser.parse_args()

    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 900)
    (image,) = viewer.open(args.image)
    widget = segment_widget()
    viewer.window.add_dock_widget(widget, name="Segment cells (cupre)", area="right")
    widget.native.setMaximumWidth(420)
    widget.model.value = args.model
    widget.score_threshold.value = args.score_threshold
    start = time.perf_counter()
    worker = widget(viewer=viewer, image=image, model=args.model, score_threshold=args.score_threshold,
                    diameter=0.0, tile_size=1024)
    loop = QEventLoop()
    worker.finished.connect(loop.quit)
    loop.exec_()
    seconds = time.perf_counter() - start
    labels = viewer.layers[f"{image.name} masks"]
    viewer.layers.selection.active = labels
    viewer.reset_view()
    iio.imwrite(args.out, viewer.screenshot(canvas_only=False, flash=False))
    print(f"{len(labels.features) - 1} objects in {seconds:.1f} s; screenshot: {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
