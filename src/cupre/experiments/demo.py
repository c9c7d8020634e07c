"""The whole CUPre method on synthetic data, sized for a laptop CPU (about 6 minutes on 2 cores).

The demo is the experiment runner on its embedded default, ``cupre/presets/demo.yaml``
(also ``configs/demo.yaml``): a natural-object stand-in for COCO and a synthetic cell
domain are generated, a Mask R-CNN is warmed up on the objects, AMT2 alternates MoCo on
the cell images with object subsets under L2-SP, and ``scratch``, ``coco`` and ``cupre``
are fine-tuned on 10% of the labeled training cells and scored on held-out cells
(LIVECell protocol). Everything lands in one folder; running again reuses what is finished.
"""

from __future__ import annotations

from pathlib import Path

from cupre.experiments.config import ExperimentConfig, load_experiment
from cupre.experiments.runner import run_experiment

PRESET = Path(__file__).resolve().parents[1] / "presets" / "demo.yaml"


def demo_config(*, seed: int = 0, device: str = "auto", precision: str = "auto") -> ExperimentConfig:
    """The embedded demo config, with its seed, device and precision set."""
    cfg = load_experiment(PRESET)
    cfg.seeds, cfg.device, cfg.precision = [seed], device, precision
    return cfg


def run_demo(out: str | Path, *, cfg: ExperimentConfig | None = None, seed: int = 0, device: str = "auto",
             precision: str = "auto") -> str:
    """Run the demo (or continue it) into ``out``; returns the Table II markdown."""
    table = run_experiment(cfg or demo_config(seed=seed, device=device, precision=precision), out)
    print(f"\ndemo: every image above is SYNTHETIC (generated cells and objects, in {Path(out) / 'data'}). The table "
          "shows that the whole method runs end to end, and how the three starts compare at this tiny budget on "
          "one seed; it cannot show how CUPre does on real cells (one seed, a few minutes of training: gaps of a "
          "few AP are noise here). Overlays of each method's masks on held-out images: "
          f"{Path(out) / 'figures' / 'fig8_overlays.png'}. For real data: cupre train --labels ... (README).")
    return table
