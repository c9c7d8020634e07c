"""Self-training: the fine-tuned model teaches itself on your unlabeled images.

``cupre finetune ... --unlabeled DIR -o OUT`` (and ``cupre train --unlabeled``) first
fine-tunes as usual (``OUT`` is that run: the teacher). Then, for each round:

1. the teacher pseudo-labels the unlabeled images (:mod:`cupre.train.pseudo`: objects
   whose score and mask agree across flips are kept; unsure ones are ignored by the
   losses; images of the labels, of validation and of test never are);
2. a student, from the teacher (``student_from: init``: from the teacher's own start, as
   STAC does) and with the same schedule, trains on the annotated images plus the
   pseudo-labelled ones (``pseudo_fraction`` of the samples, with strong augmentation; by
   default a pseudo-labelled crop teaches only its objects, never background, since the
   objects the teacher missed would teach it: ``background: learned`` to let it);
3. the student is kept, and becomes the next round's teacher, only when its validation
   figure (``select_by``) beats the teacher's; otherwise the rounds stop. Without a
   validation set nothing runs unless ``without_validation`` (a preset's choice, made on
   a benchmark's validation): then every round is kept, and the run says that nothing
   checked it.

This follows STAC (Sohn et al. 2020: a teacher's confident boxes, a student under strong
augmentation) with Noisy Student's agreement filter and Unbiased Teacher's photometric
augmentations. Two choices differ from STAC, both read on validation
(docs/benchmarks.md): the student starts from the teacher, and pseudo-labelled crops
teach no background (a BBBC038 teacher at 24 labels keeps 90% precise masks but only 29%
of the nuclei). The mean-teacher variant is not built.

With ``cupre finetune -o OUT`` (``ST`` is ``OUT/selftrain``; in an experiment, the cell
``<method>+st`` whose teacher is the ``<method>`` cell)::

    OUT/                                the fine-tuning (teacher) run
    ST/round1/pseudo_labels.json        COCO: kept objects, uncertain ones as crowd
    ST/round1/pseudo_labels.png         a few of them drawn (kept magenta, uncertain amber)
    ST/round1/student/                  the student's `cupre finetune` run
    ST/model.safetensors                the final model (the last kept student's, or the teacher's)
    ST/val_metrics.json                 its evaluations, and the rounds under "selftrain"
    ST/summary.json                     per round: counts, validation figure, kept or not
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from cupre.config import FinetuneConfig
from cupre.data.unlabeled import UnlabeledImages
from cupre.devices import pick_device, resolve_precision
from cupre.errors import CupreError
from cupre.evaluation.selection import selected
from cupre.experiments.overlays import render_pseudo_labels
from cupre.fileio import atomic_path, write_json_atomic
from cupre.inference.predict import load_model
from cupre.modelfile import MODEL_FILE
from cupre.train import loop
from cupre.train.finetune import held_out, run_finetune, training_images
from cupre.train.pseudo import Thresholds, counts, pseudo_label, write_pseudo_labels
from cupre.train.run import Run


def run_selftrain(cfg: FinetuneConfig, teacher_dir: str | Path, out: str | Path, *, min_labelled: int = 1) -> Path:
    """Fine-tune into ``teacher_dir`` (kept as it is when finished), then self-train into
    ``out`` (see the module docstring). ``out`` ends as a run folder of its own, holding
    the final model's ``model.safetensors``, ``val_metrics.json`` and predictions (the last
    kept student's, or the fine-tuned model's when no round was kept) and ``summary.json``.
    Returns ``out``'s model file; without unlabeled images or rounds, the fine-tuned one.
    ``min_labelled``: of :func:`cupre.train.finetune.run_finetune`, for the fine-tuning."""
    teacher_dir, out = Path(teacher_dir), Path(out)
    teacher = run_finetune(cfg, teacher_dir, min_labelled=min_labelled)
    st = cfg.self_train
    if not cfg.unlabeled or st.rounds == 0:
        return teacher_dir / MODEL_FILE
    if cfg.val is None and not st.without_validation:
        print("self-training: skipped, as no validation set could check it (self_train.without_validation: true "
              "runs it unchecked)")
        return teacher_dir / MODEL_FILE
    if (out / "summary.json").is_file() and (out / MODEL_FILE).is_file():
        return out / MODEL_FILE
    Run(out, tensorboard=False).save_config(cfg.to_dict())
    images = pseudo_label_images(cfg)
    score = selected(teacher, cfg.select_by) if teacher else None
    kept_dir, rounds = teacher_dir, []
    print(f"self-training: {len(images)} unlabeled images; the fine-tuned model's validation "
          f"{cfg.select_by} {fmt(score)}", flush=True)
    for r in range(1, st.rounds + 1):
        folder = out / f"round{r}"
        pseudo_file = folder / "pseudo_labels.json"
        if not pseudo_file.is_file():
            write_pseudo_labels(label_images(kept_dir / MODEL_FILE, images, cfg), pseudo_file)
            render_pseudo_labels(pseudo_file, folder / "pseudo_labels.png")
        found = counts(json.loads(pseudo_file.read_text()))
        print(f"self-training round {r}: pseudo-labels on {found['images']} images: {found['kept']} objects kept, "
              f"{found['uncertain']} uncertain (ignored), drawn in {folder / 'pseudo_labels.png'}", flush=True)
        if not found["kept"]:
            rounds.append({"round": r, **found, "student_kept": False})
            print(f"self-training round {r}: the teacher kept no object; the rounds stop")
            break
        best = run_finetune(student_config(cfg, pseudo_file, kept_dir), folder / "student")
        student_score = selected(best, cfg.select_by) if best else None
        better = score is None or (student_score is not None and student_score > score)
        rounds.append({"round": r, **found, f"val_{cfg.select_by}": student_score,
                       f"teacher_val_{cfg.select_by}": score, "student_kept": better})
        if score is None:
            print(f"self-training round {r}: student kept; no validation set checked it")
        else:
            print(f"self-training round {r}: student validation {cfg.select_by} {fmt(student_score)} against "
                  f"{fmt(score)}: {'kept' if better else 'not kept; the rounds stop'}", flush=True)
        if not better:
            break
        kept_dir, score = folder / "student", student_score
    summary = {"rounds": rounds, "model_from": str(kept_dir), "select_by": cfg.select_by,
               "checked_on_validation": cfg.val is not None}
    publish(kept_dir, out, summary)
    return out / MODEL_FILE


def student_config(cfg: FinetuneConfig, pseudo_file: Path, teacher_dir: Path) -> FinetuneConfig:
    """The student's fine-tuning: the teacher's schedule on labels plus ``pseudo_file``,
    from the teacher's initialisation or (``student_from: teacher``) from the teacher."""
    student = cfg.replace(unlabeled=[], pseudo_labels=str(pseudo_file))
    if cfg.self_train.student_from == "teacher":
        student = student.replace(from_model=str(teacher_dir / MODEL_FILE))
    return student


PUBLISHED = (MODEL_FILE, "predictions_val.json", "predictions_test.json")


def publish(kept: Path, out: Path, summary: dict) -> None:
    """The kept run's model, predictions and ``val_metrics.json`` (with the rounds) as
    ``out``'s own; ``summary.json`` last, so a folder holding it is finished."""
    for name in PUBLISHED:
        if (kept / name).is_file():
            with atomic_path(out / name) as tmp:
                shutil.copyfile(kept / name, tmp)
    metrics = json.loads((kept / "val_metrics.json").read_text()) if (kept / "val_metrics.json").is_file() else {}
    write_json_atomic(out / "val_metrics.json", {**metrics, "selftrain": summary})
    write_json_atomic(out / "summary.json", summary, indent=1)


def pseudo_label_images(cfg: FinetuneConfig) -> UnlabeledImages:
    """The unlabeled images to pseudo-label: ``cfg.unlabeled`` without any image of the
    training labels, of validation or of test (test images stay only under
    ``self_train.transductive``); at most ``max_images`` of them, a seeded choice.

    Raises:
        CupreError: nothing is left to pseudo-label.
    """
    never = [str(r.file) for r in training_images(cfg).records]
    test = None if cfg.self_train.transductive else held_out(cfg.test, cfg.test_split)
    for part in (held_out(cfg.val, cfg.val_split), test):
        never += [str(r.file) for r in part.records] if part is not None else []
    try:
        images = UnlabeledImages(cfg.unlabeled, exclude=never)
    except CupreError as exc:
        raise CupreError(f"--unlabeled: {exc}") from None
    cap = cfg.self_train.max_images
    if cap is not None and len(images.items) > cap:
        images.items = sorted(random.Random(cfg.seed).sample(images.items, cap))
    return images


def label_images(model_file: Path, images: UnlabeledImages, cfg: FinetuneConfig) -> dict:
    """The pseudo-labels of ``images`` by the model in ``model_file``."""
    device = pick_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model, _ = load_model(model_file, device=device, precision=precision)
    model.precision = precision
    st = cfg.self_train
    thresholds = Thresholds(keep_score=st.keep_score, agree_iou=st.agree_iou, uncertain_score=st.uncertain_score)
    return pseudo_label(model, images, device=device, thresholds=thresholds, views=st.views,
                        batch_size=cfg.eval_batch_size, progress=loop.SHOW_PROGRESS)


def fmt(value: float | None) -> str:
    return "(none)" if value is None else f"{100 * value:.1f}"
