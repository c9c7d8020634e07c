"""Ship the nuclei model: the cell model of ``cupre experiment configs/nuclei-model.yaml``
copied into the package, its digest, and its model card.

    .venv/bin/python tools/ship_nuclei_model.py runs/nuclei-model [--left-out runs/nuclei-without-colour]

The weights are stored as fp16 (half the file) when that keeps the validation AP: the fp16
copy is scored on the run's validation part and compared with the model it came from
(never on test). Writes ``src/cupre/presets/models/nuclei.safetensors``, ``nuclei.sha256``
and ``nuclei.md`` (the model card: data and licence, the command, the commit, the figures
per imaging kind the run measured, what the model is not for; with ``--left-out``, what
the same training without the colour acquisition scores on it).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import yaml

from cupre.config import DetectorConfig
from cupre.data.formats import open_dataset
from cupre.devices import cpu_name
from cupre.evaluation.selection import Validation
from cupre.modelfile import half_storage, load_model_file, write_model_file
from cupre.models.loading import build_from_file

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "cupre" / "presets" / "models"
MAX_BYTES = 30 * 2**20
HOLDS = 0.005  # fp16 storage is kept when validation AP (bbox and segm) drops by less than this
KINDS = {"fluo_gray": "grey fluorescence", "brightfield_color": "colour brightfield / H&E",
         "gray_brightbg": "grey, bright background"}


def cell_of(run: Path) -> Path:
    cells = sorted(p.parent for p in run.glob("cells/scratch/*/s*/model.safetensors"))
    if len(cells) != 1:
        raise SystemExit(f"{run}: expected one finished scratch cell, found {len(cells)}")
    return cells[0]


def validation_of(run: Path, model: torch.nn.Module) -> Validation:
    """The run's validation part, scored as the run scored it."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    ids = json.loads((run / "splits" / "val.json").read_text())["image_ids"]
    val = open_dataset(cfg["data"][0]["labeled"], class_agnostic=True).subset(ids)
    return Validation(model, val=val, test=None, device=torch.device("cpu"), batch_size=2, select_by="segm_AP",
                      progress=True)


def half_holds(run: Path, half: Path, chosen: dict) -> tuple[bool, dict]:
    model, _, _ = build_from_file(half)
    scores = validation_of(run, model.eval()).split_scores("val", chosen["iteration"],
                                                           threshold=chosen["matching"]["score_threshold"])
    holds = all(chosen[t]["AP"] - scores[t]["AP"] < HOLDS for t in ("bbox", "segm"))
    return holds, scores


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def left_out_section(run: Path, trained: dict) -> str:
    """The card's section on the same training with the colour acquisition left out
    (``configs/nuclei-model-without-colour.yaml``): its test part is that acquisition."""
    test = json.loads((cell_of(run) / "val_metrics.json").read_text())["best"]["test"]  # the colour images only
    return f"""
## On images unlike its training

The same training with BBBC038's colour brightfield / H&E acquisition left out
(`cupre experiment configs/nuclei-model-without-colour.yaml -o {run}`: trained and
validated on the other 557 images, tested on the 107 colour images, 256 x 320 px), so
that you can see what this kind of model does on images of a kind it never saw:

| colour brightfield / H&E | AP_bbox / AP_segm |
|---|---|
| left out of training (all 107 images) | {pct(test['bbox']['AP'])} / {pct(test['segm']['AP'])} |
| in training (this model, the colour images of its test part) | {pct(trained.get('bbox'))} / {pct(trained.get('segm'))} |

An acquisition further from BBBC038's than this one may score lower still: check the
model on a few of your own annotated images (`cupre evaluate`) and fine-tune it on them
(`cupre train --init nuclei`) where it falls short.
"""


def card(run: Path, cell: Path, det: dict, best: dict, seconds: dict, storage: str, half_scores: dict | None,
         digest: str, size: int, left_out: Path | None = None) -> str:
    cfg = yaml.safe_load((cell / "config.yaml").read_text())
    test = best.get("test", {})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    rows = []
    for kind, name in KINDS.items():
        v, t = best["per_cell_type"].get(kind, {}), test.get("per_cell_type", {}).get(kind, {})
        rows.append(f"| {name} (`{kind}`) | {pct(v.get('bbox'))} / {pct(v.get('segm'))} | "
                    f"{pct(t.get('bbox'))} / {pct(t.get('segm'))} |")
    m, tm = best["matching"], test.get("matching", {})
    half_line = ""
    if half_scores is not None:
        half_line = (f" Stored as fp16 (computed in fp32): validation AP_bbox / AP_segm {pct(half_scores['bbox']['AP'])}"
                     f" / {pct(half_scores['segm']['AP'])} against {pct(best['bbox']['AP'])} / "
                     f"{pct(best['segm']['AP'])} for the fp32 weights.")
    return f"""# cupre's nuclei model

A Mask R-CNN (ResNet-18 backbone, GroupNorm, {det.get('fpn_channels', 64)}-channel FPN) that segments cell
nuclei, trained by cupre on BBBC038. `cupre predict IMAGES -o OUT` uses it when no model is
given; `--model nuclei` names it; `cupre train --init nuclei` fine-tunes from it.

- **File**: `nuclei.safetensors`, {size / 2**20:.1f} MB, weights stored as {storage}; SHA-256 `{digest}`
  (`nuclei.sha256`). A safetensors file: loading it runs no code.{half_line}
- **Data and licence**: BBBC038 stage1_train (the 2018 Data Science Bowl's nuclei), CC0 1.0,
  Broad Bioimage Benchmark Collection. Cite: Caicedo et al., *Nucleus segmentation across
  imaging experiments: the 2018 Data Science Bowl*, Nature Methods 16, 1247-1253 (2019).
- **Training**: `cupre experiment configs/nuclei-model.yaml -o {run}` then
  `python tools/ship_nuclei_model.py {run}`, at commit `{commit}`. The CPU recipe's
  partition of stage1_train (70/15/15 by imaging kind, seed 0): trained from scratch on
  the 465 images of its train part, the iteration ({best['iteration']} of
  {cfg.get('optim', {}).get('iterations', '?')}) and the score threshold
  ({m.get('score_threshold')}) chosen on its 100 validation images, scored once on its 99
  test images, which it never saw (nor did any choice). Training took
  {seconds.get('training', 0) / 60:.0f} min ({seconds.get('total', 0) / 60:.0f} min with
  validation and test) on {cpu_name()}, precision {cfg.get('precision', 'auto')} (bf16 where
  the CPU computes it natively), on one thread while other training shared the two cores; fp32
  was not timed (fp32 steps ran 1.46x the bf16 ones on this CPU: about 95 min). The start
  (scratch) was not compared with the COCO and CUPre starts for this model.
- **Works at**: every image rescaled so that its typical nucleus measures
  {det.get('object_size')} px (the model estimates each image's scale itself, or takes
  `--diameter`); images with a bright background are inverted first (`invert_bright`).

## Figures

AP x100 under the LIVECell protocol (COCO AP, class-agnostic, up to 2,000 detections).

| | validation | test |
|---|---|---|
| AP_bbox / AP_segm | {pct(best['bbox']['AP'])} / {pct(best['segm']['AP'])} | {pct(test.get('bbox', {}).get('AP'))} / {pct(test.get('segm', {}).get('AP'))} |
| AP@0.5 (TP / (TP + FP + FN), objects above the threshold) | {pct(m.get('AP50'))} | {pct(tm.get('AP50'))} |
| Data Science Bowl score | {pct(m.get('DSB'))} | {pct(tm.get('DSB'))} |

Per imaging kind, AP_bbox / AP_segm:

| kind | validation | test |
|---|---|---|
{chr(10).join(rows)}

## What it is not for

- Whole cells, cytoplasm or membranes: it was taught nuclei only.
- Imaging unlike BBBC038's (it holds 541 grey fluorescence, 107 colour brightfield / H&E
  and 16 grey bright-background images): tissue sections at other magnifications,
  phase contrast, electron microscopy, 3-D stacks (each plane is segmented on its own).
  Check it on a few of your images with their masks (`cupre evaluate`) before trusting it;
  fine-tune it on a handful of yours (`cupre train --init nuclei`) where it falls short.
- The grey bright-background kind is the weakest (16 training-set images in all).
""" + ("" if left_out is None else left_out_section(left_out, test.get("per_cell_type", {}).get("brightfield_color", {})))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the `cupre experiment configs/nuclei-model.yaml` run folder")
    parser.add_argument("-o", "--out", type=Path, default=OUT)
    parser.add_argument("--left-out", type=Path, help="the `cupre experiment configs/nuclei-model-without-colour.yaml`"
                        " run folder: its figures join the card")
    args = parser.parse_args()
    cell = cell_of(args.run)
    metrics = json.loads((cell / "val_metrics.json").read_text())
    best, seconds = metrics["best"], metrics.get("seconds", {})
    ckpt = load_model_file(cell / "model.safetensors")
    cfg = DetectorConfig.from_dict(ckpt["detector"])
    facts = {k: v for k, v in ckpt.items() if k not in ("model", "detector", "categories")}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        half = write_model_file(Path(tmp) / "half.safetensors", half_storage(ckpt["model"]), cfg,
                                ckpt["categories"], **facts)
        holds, half_scores = half_holds(args.run, half, best)
        print(f"fp16 storage: validation AP_bbox {pct(half_scores['bbox']['AP'])} / AP_segm "
              f"{pct(half_scores['segm']['AP'])} against {pct(best['bbox']['AP'])} / {pct(best['segm']['AP'])}"
              f" -> {'kept' if holds else 'not kept'}")
        source = half if holds else cell / "model.safetensors"
        if source.stat().st_size > MAX_BYTES:
            raise SystemExit(f"{source}: {source.stat().st_size / 2**20:.1f} MB, over the 30 MB the package allows")
        target = args.out / "nuclei.safetensors"
        shutil.copyfile(source, target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    (args.out / "nuclei.sha256").write_text(f"{digest}  nuclei.safetensors\n")
    text = card(args.run, cell, ckpt["detector"], best, seconds, "fp16" if holds else "fp32", half_scores if holds else None, digest,
                target.stat().st_size, left_out=args.left_out)
    (args.out / "nuclei.md").write_text(text)
    print(f"wrote {target} ({target.stat().st_size / 2**20:.1f} MB), nuclei.sha256, nuclei.md")


if __name__ == "__main__":
    main()
