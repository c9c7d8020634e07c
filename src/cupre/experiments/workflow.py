"""From your images to your masks: the whole CUPre path in one command.

``cupre train --labels DATA --unlabeled DIR [DIR ...] -o RUN`` runs, on the machine you
have, everything the paper does before you get masks:

1. **COCO stage.** A Mask R-CNN is warmed up on COCO-format data you give (``--coco``,
   e.g. a COCO subset on disk); without it, on synthetic natural-object images written
   into ``RUN/data/objects`` (nothing is downloaded).
2. **AMT2.** MoCo v2 on your unlabeled images (and the images of your training labels)
   alternates with COCO training under L2-SP.
3. **Fine-tuning** from the CUPre weights on your annotated images. With at least
   ``min_val_images`` of them, a validation part (``val_fraction``) is held out: it
   chooses the kept model and never reaches MoCo. With fewer, the preset's schedule runs
   to its end and the run says that nothing checked it (``--val`` gives a separate set).
4. **Self-training**, with ``--self-train`` (:mod:`cupre.experiments.selftrain`): the
   fine-tuned model pseudo-labels your unlabeled images and a student trains on your
   labels plus them; a round is kept only when validation improves. It runs when there
   is a validation set and the whole estimate stays within the preset's
   ``self_train_within_minutes``. Not on by default: in the one measurement so far, the
   same extra iterations on the labels alone gave more (docs/benchmarks.md).
5. **Masks** for every unlabeled image (``cupre predict``: label TIFF, CSV, overlay),
   by the final model.

::

    RUN/config.yaml             the resolved workflow config
    RUN/data/objects/           synthetic natural objects (when no --coco is given)
    RUN/splits/{train,val}.json the annotated images used to train / to validate
    RUN/pretrain/               a `cupre pretrain` run (COCO stage + AMT2)
    RUN/finetune/               a `cupre finetune` run: model.safetensors is the fine-tuned model
    RUN/finetune/selftrain/     with --self-train: its model.safetensors is your model
    RUN/masks/                  a `cupre predict` run over the unlabeled images

With ``--init nuclei`` (a model shipped with cupre, :mod:`cupre.shipped`; the CPU preset's
default) stages 1 and 2 are skipped: fine-tuning (and self-training) start from the
shipped model, whose own detector config stands; there is no ``RUN/pretrain/`` nor
``RUN/data/objects/``, and the estimate and the schedule fitting count no pre-training.
``--init cupre`` (the GPU preset's default) is the path above.

The preset (``--preset cpu``, ``gpu``; ``auto``: ``gpu`` when CUDA is there) sizes
everything for the device; before it starts the run prints its estimated time, from
seconds per step measured on the machine named in the preset. Running the same command
again continues a stopped run: finished stages are kept, a stopped stage resumes from its
last checkpoint.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable
from pathlib import Path

from pydantic import Field

from cupre.config import (
    ConfigBase,
    Count,
    FinetuneConfig,
    Positive,
    Precision,
    PretrainConfig,
    load_yaml,
)
from cupre.devices import pick_device, resolve_precision
from cupre.errors import CupreError
from cupre.experiments.config import SyntheticConfig
from cupre.experiments.grid import write_split, write_synthetic_data
from cupre.shipped import TRAIN_INIT, TRAIN_INITS, shipped_model
from cupre.train.inits import pretrain_done

PRESETS = Path(__file__).resolve().parents[1] / "presets"
PRESET_NAMES = ("cpu", "gpu")
TrainInit = typing.Literal[TRAIN_INITS]  # type: ignore[valid-type]


class Timing(ConfigBase):
    """Seconds per step of each stage, measured on ``machine``; for the estimate only."""

    machine: str = ""
    warmup: float = 0.0  # per COCO warm-up iteration
    moco: float = 0.0  # per MoCo iteration
    coco: float = 0.0  # per AMT2 COCO iteration
    finetune: float = 0.0  # per fine-tuning iteration
    evaluate: float = 0.0  # per validation image and evaluation
    predict: float = 0.0  # per predicted image


class WorkflowConfig(ConfigBase):
    """``cupre train``: what to train on, and the preset's schedule."""

    labels: str = ""  # annotated images, any supported format
    unlabeled: list[str] = Field(default_factory=list)  # folders / files of unlabeled images (MoCo, then masks)
    val: str | None = None  # a separate validation set (then nothing is held out of `labels`)
    coco: list[str] = Field(default_factory=list)  # COCO-format data for the COCO stage (none: synthetic objects)
    init: TrainInit = TRAIN_INIT  # cupre: COCO stage + AMT2, then fine-tuning; a shipped model: fine-tuning from it
    synthetic_objects: SyntheticConfig = Field(default_factory=lambda: SyntheticConfig(images=200, size=256))
    min_val_images: Count = 10  # hold out a validation part only from this many annotated images on
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    predict: bool = True  # masks for the unlabeled images at the end
    self_train: bool = False  # self-training on the unlabeled images after fine-tuning (finetune.self_train: how)
    self_train_within_minutes: float | None = None  # ... only when the whole estimate stays within this (None: always)
    within_minutes: Positive | None = None  # a longer estimate shortens the schedule to fit (None: never shortened)
    timing: Timing = Field(default_factory=Timing)  # seconds per step where training runs in bf16
    timing_fp32: Timing = Field(default_factory=Timing)  # ... and in fp32 (a CPU without bf16 units); unset: `timing`
    seed: int = 0
    device: str = "auto"
    precision: Precision = "auto"


def preset_path(name: str) -> Path:
    """The embedded preset file for ``cpu`` or ``gpu`` (``auto``: by what this machine has)."""
    if name == "auto":
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in PRESET_NAMES:
        raise CupreError(f"--preset must be auto, {' or '.join(PRESET_NAMES)}, got {name!r}")
    return PRESETS / f"train-{name}.yaml"


def load_workflow(path: str | Path, **inputs) -> WorkflowConfig:
    """A preset (or your own YAML of :class:`WorkflowConfig` keys) with ``inputs`` on top
    (``labels``, ``unlabeled``, ``val``, ``coco``, ``init``, ``seed``, ``device``, ``precision``; None
    values are ignored). Input paths become absolute."""
    raw = load_yaml(path)
    raw.update({k: v for k, v in inputs.items() if v is not None})
    cfg = WorkflowConfig.from_dict(raw, where=str(path))
    cfg.labels = str(Path(cfg.labels).expanduser().resolve()) if cfg.labels else ""
    cfg.unlabeled = [str(Path(p).expanduser().resolve()) for p in cfg.unlabeled]
    cfg.coco = [str(Path(p).expanduser().resolve()) for p in cfg.coco]
    cfg.val = str(Path(cfg.val).expanduser().resolve()) if cfg.val else None
    return cfg


def check_inputs(cfg: WorkflowConfig) -> None:
    """One line for the first missing or empty input, before anything is written."""
    if not cfg.labels:
        raise CupreError("train: --labels DATA is required (your annotated images, any supported format)")
    if not pretrains(cfg):
        shipped_model(cfg.init)  # a shipped model missing from this install
        if cfg.coco:
            raise CupreError(f"train: --coco feeds the COCO stage, which --init {cfg.init} skips (it fine-tunes the "
                             "shipped model); drop --coco, or use --init cupre")
    from cupre.data.formats import open_dataset
    from cupre.data.unlabeled import walk_images

    for flag, paths in (("--labels", [cfg.labels]), ("--unlabeled", cfg.unlabeled), ("--coco", cfg.coco),
                        ("--val", [cfg.val] if cfg.val else [])):
        for p in paths:
            if not Path(p).exists():
                raise CupreError(f"{p}: not found ({flag})")
    for flag, path in (("--labels", cfg.labels), ("--val", cfg.val)):
        if path and not open_dataset(path, class_agnostic=True).records:
            raise CupreError(f"{path}: no annotated images found ({flag})")
    for p in cfg.unlabeled:
        if Path(p).is_dir() and not walk_images(Path(p)):
            raise CupreError(f"{p}: no image files in this folder (--unlabeled)")


def hold_out(cfg: WorkflowConfig, out: Path) -> tuple[list[int], list[int], list[str]]:
    """Train and validation image ids of ``cfg.labels`` (written once to ``RUN/splits``),
    and the files kept out of MoCo: the validation images, held out or ``cfg.val``'s."""
    from cupre.data.formats import open_dataset
    from cupre.data.splits import partition

    records = open_dataset(cfg.labels, class_agnostic=True).records
    if not records:
        raise CupreError(f"{cfg.labels}: no annotated images found (--labels)")
    ids = [r.image_id for r in records]
    if cfg.val is None and len(records) >= cfg.min_val_images:
        parts = partition(records, (1 - cfg.val_fraction, cfg.val_fraction), seed=cfg.seed, names=("train", "val"))
    else:
        parts = {"train": sorted(ids), "val": []}
    for name, part in parts.items():
        if part:
            write_split(out / "splits" / f"{name}.json", {"dataset": cfg.labels, "part": name, "image_ids": part},
                        write=True)
    held = [str(r.file) for r in records if r.image_id in set(parts["val"])]
    if cfg.val:
        held += [str(r.file) for r in open_dataset(cfg.val, class_agnostic=True).records]
    return parts["train"], parts["val"], held


def pretrains(cfg: WorkflowConfig) -> bool:
    """Whether the run pre-trains (``init: cupre``); from a shipped model it only fine-tunes."""
    return cfg.init == "cupre"


def pretrain_config(cfg: WorkflowConfig, out: Path, held_out: list[str]) -> PretrainConfig:
    """The COCO stage and AMT2 on the user's data (MoCo: unlabeled plus training-label images)."""
    coco = list(cfg.coco) or [str(out / "data" / "objects" / "annotations.json")]
    return cfg.pretrain.replace(coco=coco, unlabeled=[*cfg.unlabeled, cfg.labels], exclude=sorted(set(held_out)),
                                seed=cfg.seed, device=cfg.device, precision=cfg.precision)


def finetune_config(cfg: WorkflowConfig, out: Path, has_val: bool, self_train: bool = False) -> FinetuneConfig:
    """Fine-tuning from the CUPre weights (or from the shipped model ``cfg.init``, with its
    own detector config) on the training part of the labels (then self-training on the
    unlabeled images when ``self_train``)."""
    data = cfg.finetune.to_dict()
    if pretrains(cfg):
        detector = {k: v for k, v in cfg.pretrain.detector.to_dict().items() if k != "num_classes"}
        data.update(init="cupre", pretrain_dir=str(out / "pretrain"), detector=detector)
    else:
        data.update(from_model=cfg.init, pretrain_dir=None, detector={})
    data.update(train=cfg.labels, split=str(out / "splits" / "train.json"), seed=cfg.seed, device=cfg.device,
                precision=cfg.precision, unlabeled=list(cfg.unlabeled) if self_train else [])
    if cfg.val:
        data.update(val=cfg.val, val_split=None)
    elif has_val:
        data.update(val=cfg.labels, val_split=str(out / "splits" / "val.json"))
    return FinetuneConfig.from_dict(data, where="finetune")


def step_times(cfg: WorkflowConfig, precision: str) -> Timing:
    """The preset's seconds per step for training in ``precision`` (``bf16`` or ``fp32``)."""
    return cfg.timing_fp32 if precision == "fp32" and cfg.timing_fp32.finetune > 0 else cfg.timing


def estimate_seconds(cfg: WorkflowConfig, pre: PretrainConfig | None, ft: FinetuneConfig, *, n_unlabeled: int,
                     n_val: int, timing: Timing | None = None) -> dict[str, float]:
    """Seconds per stage from the preset's measured seconds per step (self-training: every
    round run, each a pass per view over the unlabeled images and a fine-tuning); no
    ``pretrain`` entry when ``pre`` is None (a run from a shipped model)."""
    t, st = timing or cfg.timing, ft.self_train
    evaluations = (math.ceil(ft.optim.iterations / ft.eval_every) + 1) if n_val else 0
    finetune = ft.optim.iterations * t.finetune + evaluations * n_val * t.evaluate
    pseudo = min(n_unlabeled, st.max_images or n_unlabeled)
    pretrain = {}
    if pre is not None:
        amt2 = pre.amt2
        moco_its = max(amt2.moco.optim.iterations, math.ceil(n_unlabeled / amt2.moco.optim.batch_size))
        pretrain["pretrain"] = (pre.warmup.iterations * t.warmup
                                + amt2.rounds * (moco_its * t.moco + amt2.coco.iterations * t.coco))
    return {
        **pretrain,
        "finetune": finetune,
        "self-training": st.rounds * (pseudo * t.predict * (1 + len(st.views)) + finetune) if n_unlabeled else 0.0,
        "predict": (n_unlabeled * t.predict) if cfg.predict else 0.0,
    }


def training_seconds(parts: dict[str, float], self_train: bool) -> float:
    """What ``within_minutes`` bounds: pre-training, fine-tuning and (when it runs)
    self-training; the masks of the unlabeled images are written after, on their own
    estimate."""
    return sum(v for k, v in parts.items() if k != "predict" and (self_train or k != "self-training"))


def fit_schedule(pre: PretrainConfig | None, ft: FinetuneConfig,
                 seconds: Callable[[PretrainConfig | None, FinetuneConfig], float],
                 minutes: float, *, floor: float = 0.25) -> tuple[PretrainConfig | None, FinetuneConfig, float]:
    """The schedule shortened so that its estimate (``seconds``) fits in ``minutes``: the
    warm-up, AMT2's COCO steps and the fine-tuning (with their warm-up and validation
    interval) keep the same share of their iterations, the largest that fits, at least
    ``floor``; MoCo (one pass over the unlabeled images at least) and the masks are
    kept whole. ``pre`` None (a run from a shipped model): the fine-tuning alone.
    Returns the configs and the share kept (1.0: nothing shortened)."""
    budget = 60 * minutes
    if seconds(pre, ft) <= budget:
        return pre, ft, 1.0

    def shortened(share: float) -> tuple[PretrainConfig | None, FinetuneConfig]:
        def cut(n: int) -> int:
            return max(1, round(n * share))

        opt = ft.optim
        if pre is not None:
            warm, coco = pre.warmup, pre.amt2.coco
            pre_cut = pre.replace(warmup=warm.replace(iterations=cut(warm.iterations),
                                                      warmup_iterations=min(warm.warmup_iterations,
                                                                            cut(warm.iterations))),
                                  amt2=pre.amt2.replace(coco=coco.replace(iterations=cut(coco.iterations))))
        return (pre_cut if pre is not None else None,
                ft.replace(optim=opt.replace(iterations=cut(opt.iterations),
                                             warmup_iterations=min(opt.warmup_iterations, cut(opt.iterations))),
                           eval_every=cut(ft.eval_every)))

    low, high = floor, 1.0
    for _ in range(20):  # the largest share whose estimate fits
        mid = (low + high) / 2
        low, high = (mid, high) if seconds(*shortened(mid)) <= budget else (low, mid)
    return (*shortened(low), low)


def self_train_plan(cfg: WorkflowConfig, plan: dict[str, float], *, has_val: bool) -> tuple[bool, str]:
    """Whether self-training runs, and the line that says why (or why not)."""
    if not cfg.unlabeled:
        return False, "train: no unlabeled images, so no self-training"
    if not cfg.self_train or cfg.finetune.self_train.rounds == 0:
        return False, "train: no self-training (--self-train to have it)"
    if not has_val and not cfg.finetune.self_train.without_validation:
        return False, ("train: no self-training: without a validation set nothing would check that it helps "
                       "(give --val, or 10 or more annotated images)")
    limit = cfg.self_train_within_minutes
    if limit is not None and sum(plan.values()) > 60 * limit:
        return False, (f"train: self-training skipped: with it the run would take {format_minutes(sum(plan.values()))}"
                       f", over the preset's {limit:g} min (self_train_within_minutes)")
    return True, (f"train: self-training on the unlabeled images, {cfg.finetune.self_train.rounds} round(s), each "
                  "kept only if validation improves")


INPUT_KEYS = ("labels", "unlabeled", "val", "coco", "init", "seed")


# What a call may change when it continues a run: where and how it computes, and the flags
# of the command line that are no settings of the run.
CALL_KEYS = ("device", "precision", "self_train", "pretrain.keep_checkpoints", "finetune.keep_checkpoints")


def continued(cfg: WorkflowConfig, out: Path, *, config: str | Path | None = None,
              given: typing.Iterable[str] | None = None) -> WorkflowConfig:
    """``cfg``, or for a folder holding a run the saved config with this call's device and
    precision: a stopped run continues as it started (even if the preset has changed since).

    Args:
        config: the ``--config`` file ``cfg`` was read from, if one was given: then it
            must hold the settings the run started with.
        given: the :data:`INPUT_KEYS` the caller typed (None: all of them); one not typed
            is the run's own (say ``init``, whose default a preset sets and may change).

    Raises:
        CupreError: the folder holds a run on other inputs, or ``config`` changes a setting.
    """
    saved = out / "config.yaml"
    if not saved.is_file():
        return cfg
    before = WorkflowConfig.from_dict(load_yaml(saved), where=str(saved))
    given = set(INPUT_KEYS if given is None else given)
    typed = [k for k in INPUT_KEYS if k in given]
    cfg = cfg.replace(**{k: getattr(before, k) for k in INPUT_KEYS if k not in typed})
    changed = [k for k in typed if getattr(before, k) != getattr(cfg, k)]
    if changed:
        raise CupreError(f"{out}: holds a run on other {', '.join(changed)} ({saved}); continue it with the same "
                         "inputs, or use another -o")
    settings = [k for k in changed_keys(before.to_dict(), cfg.to_dict()) if k not in CALL_KEYS]
    if config is not None and settings:
        was, now = (flat(c.to_dict())[settings[0]] for c in (before, cfg))
        more = f" and {len(settings) - 1} more" if len(settings) > 1 else ""
        raise CupreError(f"{config}: {settings[0]} is {now!r}, the run in {out} started with {was!r}{more}; a "
                         "run continues as it started: give its --config (or none), or use another -o")
    return before.replace(device=cfg.device, precision=cfg.precision)


def flat(data: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"finetune.optim.lr": value, ...}``."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def changed_keys(before: dict, after: dict) -> list[str]:
    """The dotted keys whose values differ between two config dicts, in order."""
    a, b = flat(before), flat(after)
    return [k for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def run_workflow(cfg: WorkflowConfig, out: str | Path, *, config: str | Path | None = None,
                 given: typing.Iterable[str] | None = None) -> Path:
    """Run (or continue) the whole path into ``out``; returns the model file.

    ``config``: the ``--config`` file ``cfg`` was read from, ``given``: the inputs the user
    typed (a run continues only with the inputs and settings it started with: :func:`continued`)."""
    from cupre.data.formats import open_dataset
    from cupre.data.unlabeled import UnlabeledImages
    from cupre.experiments.selftrain import run_selftrain
    from cupre.inference.ledger import FOLDER as LEDGER
    from cupre.inference.predict import PredictOptions, run_predict
    from cupre.train.pretrain import run_pretrain
    from cupre.train.finetune import MIN_LABELLED_IMAGES, count_labelled, labels_summary
    from cupre.train.run import Run

    out = Path(out)
    cfg = continued(cfg, out, config=config, given=given)
    check_inputs(cfg)
    # the labels' usable images are counted (and too few refused) before anything is written
    count_labelled(open_dataset(cfg.labels, class_agnostic=True), cfg.labels, minimum=MIN_LABELLED_IMAGES)
    Run(out, tensorboard=False).save_config(cfg.to_dict())
    if pretrains(cfg) and not cfg.coco:
        write_synthetic_data("objects", cfg.synthetic_objects, out / "data" / "objects")
    train_ids, val_ids, held = hold_out(cfg, out)
    pre = pretrain_config(cfg, out, held) if pretrains(cfg) else None
    ft = finetune_config(cfg, out, has_val=bool(val_ids), self_train=True)
    n_unlabeled = len(UnlabeledImages(cfg.unlabeled)) if cfg.unlabeled else 0
    n_val = len(held)  # the validation images, held out of the labels or --val's
    precision = resolve_precision(cfg.precision, pick_device(cfg.device))
    timing = step_times(cfg, precision)
    plan = estimate_seconds(cfg, pre, ft, n_unlabeled=n_unlabeled, n_val=n_val, timing=timing)
    self_train, why = self_train_plan(cfg, plan, has_val=bool(n_val))
    if not self_train:
        plan["self-training"] = 0.0
        ft = finetune_config(cfg, out, has_val=bool(val_ids), self_train=False)
    measured = timing.finetune > 0  # a config of one's own may hold no step times: then no estimate, no fitting
    if cfg.within_minutes is not None and measured:  # the training's budget: the masks of the unlabeled images come after it
        full = training_seconds(plan, self_train)

        def seconds(p: PretrainConfig | None, f: FinetuneConfig) -> float:
            parts = estimate_seconds(cfg, p, f, n_unlabeled=n_unlabeled, n_val=n_val, timing=timing)
            return training_seconds(parts, self_train)

        pre, ft, share = fit_schedule(pre, ft, seconds, cfg.within_minutes)
        if share < 1.0:
            plan = estimate_seconds(cfg, pre, ft, n_unlabeled=n_unlabeled, n_val=n_val, timing=timing)
            if not self_train:
                plan["self-training"] = 0.0
            what = "warm-up, COCO steps and fine-tuning are" if pre is not None else "fine-tuning is"
            print(f"train: the preset's whole training would take {format_minutes(full)} on this machine "
                  f"({precision}); {what} shortened to {share:.0%} of the iterations to fit its "
                  f"{cfg.within_minutes:g} min (within_minutes; a shorter schedule gives a weaker model: set "
                  "within_minutes: null in --config for the whole one)")
    start = (f"COCO stage on {'your COCO data' if cfg.coco else 'synthetic objects'}" if pre is not None else
             f"fine-tuning from cupre's shipped {cfg.init} model ({shipped_model(cfg.init)}), no pre-training")
    print(f"train: {len(train_ids)} annotated images to train on, {n_val} to validate, {n_unlabeled} unlabeled; "
          f"{start}")
    if not n_val:
        print("train: too few annotated images to hold some out "
              f"(fewer than {cfg.min_val_images}): the schedule runs to its end and nothing checks the model; "
              "give --val DATA to have it checked")
    training = {k: v for k, v in plan.items() if k != "predict"}
    if not measured:
        print("train: no time estimate: the config holds no seconds per step (`timing`, as in "
              "configs/train-cpu.yaml)", flush=True)
    else:
        print(f"train: estimated {format_minutes(sum(training.values()))} of training ("
              + ", ".join(f"{k} {format_minutes(v)}" for k, v in training.items())
              + (f"), then about {format_minutes(plan['predict'])} for the masks of the {n_unlabeled} unlabeled "
                 "images" if plan["predict"] else ")")
              + f"; from step times measured on {timing.machine or 'an unnamed machine'}, not on this one", flush=True)
    print(why, flush=True)
    started = time.time()
    if pre is not None and not pretrain_done(out / "pretrain", ["cupre"]):
        run_pretrain(pre, out / "pretrain")
        print(f"train: pre-training done after {format_minutes(time.time() - started)}", flush=True)
    finetune_dir = out / "finetune"
    if (finetune_dir / "state.pt").is_file() and not (finetune_dir / "val_metrics.json").is_file():
        print("train: continuing the stopped fine-tuning from its last checkpoint")
    model_file = run_selftrain(ft, finetune_dir, finetune_dir / "selftrain",  # resumes from state.pt; finished
                               min_labelled=MIN_LABELLED_IMAGES)  # runs are kept as they are
    said = labels_summary(finetune_dir)
    print(f"train: model {model_file} after {format_minutes(time.time() - started)}"
          + (f"; {said}" if said else ""), flush=True)
    masks = out / "masks"
    if cfg.predict and cfg.unlabeled and not (masks / "images.json").is_file():
        options = PredictOptions(device=cfg.device, precision=cfg.precision,
                                 resume=(masks / LEDGER / "run.json").is_file())
        print(f"train: writing the masks of the unlabeled images into {masks} (about "
              f"{format_minutes(plan['predict'])})", flush=True)
        summary = run_predict(model_file, list(cfg.unlabeled), out=masks, options=options)
        print(f"train: masks of {summary.predicted} images ({summary.objects} objects) in {masks} "
              f"after {format_minutes(time.time() - started)}")
    return model_file


def format_minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"
