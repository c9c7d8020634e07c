"""The whole CUPre method on real nuclei, sized for a laptop CPU (about 10 minutes on 2 cores, fp32).

The demo is the experiment runner on its embedded default, cupre/presets/demo.yaml (also
configs/demo.yaml), with 29 real nucleus images shipped in the package (BBBC038, CC0;
cupre/presets/nuclei/README.md). First, in seconds, cupre's shipped nuclei model is scored
as it is on the 9 held-out test images (drawn from the part of BBBC038 it never saw; the
row is skipped, with a line saying so, where the install has no such model). Then a Mask
R-CNN is warmed up on generated natural-object images (the stand-in for COCO; nothing is
downloaded), AMT2 alternates MoCo on the 17 training images with object subsets under
L2-SP, and scratch, coco and cupre are each fine-tuned on the same 5 annotated images,
chosen on 3 validation images and scored on the 9 test images (LIVECell protocol), with a
progress line each tenth of their steps. It ends with a summary for the person who ran
it (what each row is, what AP means, the one-seed caveat, where the models are, the next
command, the wall time) and writes OUT/report.html: the summary, each model's masks on
held-out images at full size, the tables, where the time went. Running it again reuses
what is finished.

--synthetic runs the same on generated cells instead (cupre/presets/demo-synthetic.yaml).
"""

from __future__ import annotations

from pathlib import Path

from cupre.experiments.config import ExperimentConfig, load_experiment
from cupre.experiments.demo_summary import demo_summary
from cupre.experiments.runner import run_experiment

PRESETS = Path(__file__).resolve().parents[1] / "presets"
PRESET = PRESETS / "demo.yaml"
SYNTHETIC = PRESETS / "demo-synthetic.yaml"


def demo_config(*, synthetic: bool = False, seed: int = 0, device: str = "auto", precision: str = "auto",
                keep_checkpoints: bool = False) -> ExperimentConfig:
    """The embedded demo config, with its seed, device and precision set."""
    cfg = load_experiment(SYNTHETIC if synthetic else PRESET)
    cfg.seeds, cfg.device, cfg.precision = [seed], device, precision
    cfg.pretrain.keep_checkpoints = cfg.finetune.keep_checkpoints = keep_checkpoints
    return cfg


def run_demo(out: str | Path, *, cfg: ExperimentConfig | None = None, synthetic: bool = False, seed: int = 0,
             device: str = "auto", precision: str = "auto", keep_checkpoints: bool = False) -> str:
    """Run (or continue) the demo into ``out``; returns the Table II markdown. What it prints
    at the end, and the top of its report, is :func:`demo_summary`: written for the person
    who ran it, not a paper's table (that is in OUT/table2.md and further down the report)."""
    cfg = cfg or demo_config(synthetic=synthetic, seed=seed, device=device, precision=precision,
                             keep_checkpoints=keep_checkpoints)
    out = Path(out)
    table = run_experiment(cfg, out, summary=lambda rows, wall: demo_summary(cfg, out, rows, wall))
    if cfg.synthetic_cells.images > 0:
        print(f"\ndemo: every image above is SYNTHETIC (generated cells and objects, in {out / 'data'}): the table "
              "shows that the whole method runs end to end, not how CUPre does on real cells.")
    return table
