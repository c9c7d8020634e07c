"""What a ``cupre predict`` run has finished, so that an interrupted run continues.

The ledger lives in ``OUT/.cupre-predict/``: ``run.json`` (the model's digest, the
options that change outputs and the inputs) and one ``<image id>.json`` per finished
image (its COCO results and ``images.json`` entry), written after the image's own files.
``--resume`` skips the finished images and refuses a run whose model, options or inputs
differ; a completed run removes its ledger.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from cupre.errors import CupreError
from cupre.fileio import write_json_atomic

FOLDER = ".cupre-predict"
RESULT_OPTIONS = ("score_threshold", "max_detections", "tile_size", "tile_overlap", "diameter", "precision",
                  "outputs")


def model_identity(model: Any) -> str:
    """SHA-256 of a model file's bytes, or the class of a model passed in memory."""
    if isinstance(model, (str, Path)):
        h = hashlib.sha256()
        with open(model, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    return f"in-memory:{type(model).__name__}"


class Ledger:
    """The finished images of one prediction run in ``out``."""

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.folder = Path(out) / FOLDER
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back: a tuple as a list

    def start(self, *, resume: bool) -> set[int]:
        """Begin (or continue) the run; returns the ids of images finished before.

        Raises:
            CupreError: ``resume`` without a ledger, or one written for another model,
                other options or other inputs.
        """
        manifest = self.folder / "run.json"
        if not resume:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            write_json_atomic(manifest, self.fingerprint, indent=1)
            return set()
        if not manifest.is_file():
            raise CupreError(f"{self.folder.parent}: nothing to resume (no unfinished cupre predict run there)")
        before = json.loads(manifest.read_text())
        changed = [key for key in ("model", "options", "inputs") if before.get(key) != self.fingerprint[key]]
        if changed:
            raise CupreError(f"{self.folder.parent}: the stopped run used another {' and '.join(changed)}; "
                             "continue it with the same model, options and inputs, or use another -o")
        return {int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit()}

    def record(self, image_id: int, results: list[dict], entry: dict) -> None:
        write_json_atomic(self.folder / f"{image_id}.json", {"results": results, "entry": entry})

    def read(self, image_id: int) -> dict:
        return json.loads((self.folder / f"{image_id}.json").read_text())

    def close(self) -> None:
        """The run is complete: its ledger is no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
