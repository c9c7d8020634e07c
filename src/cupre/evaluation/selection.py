"""Validation while fine-tuning: score the model now and then, say which evaluation is
best, and score the test set once with the model validation chose.

Every score runs the model as ``cupre predict`` does (:func:`predict_dataset`) and reads
it under the LIVECell protocol. Saving the kept model is the caller's business.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import torch

from cupre.data.convert import dataset_to_coco
from cupre.evaluation.livecell import evaluate
from cupre.evaluation.matching import best_threshold, match_images, matching_figures
from cupre.evaluation.model_eval import predict_dataset


def best_entry(history: list[dict], select_by: str) -> dict:
    """The evaluation with the highest ``select_by`` (``segm_AP``/``bbox_AP``), earliest on ties."""
    if not history:
        return {}
    return max(history, key=lambda h: (selected(h, select_by), -h["iteration"]))


def selected(entry: dict, select_by: str) -> float:
    """An evaluation's ``select_by`` figure (``segm_AP`` -> ``entry["segm"]["AP"]``)."""
    kind, figure = select_by.split("_", 1)
    return entry[kind][figure]


class Validation:
    """The validation history of one fine-tuning run.

    ``history`` holds one entry per scored iteration (``{"iteration", "bbox", "segm",
    "per_cell_type", "matching"}``, and ``"test"`` in the chosen one once :meth:`test`
    ran); ``matching`` holds the score threshold with the best AP@0.5 on validation
    (:func:`~cupre.evaluation.matching.best_threshold`) and the object figures there,
    which the test set is read at too;
    ``predictions[split]`` the latest COCO results of each split; ``seconds[split]`` the
    time spent predicting and scoring it. ``log(split, iteration, figures)`` receives
    every score.
    """

    def __init__(self, model: torch.nn.Module, *, val, test, device: torch.device, batch_size: int,
                 select_by: str, log: Callable[[str, int, dict], None] | None = None,
                 progress: bool = False) -> None:
        self.model, self.device, self.batch_size = model, device, batch_size
        self.data = {"val": val, "test": test}
        self.gt = {split: dataset_to_coco(d) for split, d in self.data.items() if d is not None}
        self.select_by, self.log, self.progress = select_by, log, progress
        self.history: list[dict] = []
        self.predictions: dict[str, list] = {}
        self.seconds: dict[str, float] = defaultdict(float)

    @property
    def active(self) -> bool:
        return self.data["val"] is not None

    def best(self) -> dict:
        return best_entry(self.history, self.select_by)

    def score(self, iteration: int) -> bool:
        """Score validation at ``iteration`` (once per iteration); True when it is the best so far."""
        if not self.active or any(h["iteration"] == iteration for h in self.history):
            return False
        entry = {"iteration": iteration, **self.split_scores("val", iteration)}
        self.history.append(entry)
        return self.best() is entry

    def test(self) -> None:
        """Score the test set with the model as it is now (the caller has loaded the chosen
        weights) into the best entry."""
        best = self.best()
        if self.data["test"] is not None and best:
            best["test"] = self.split_scores("test", best["iteration"], threshold=best["matching"]["score_threshold"])

    def split_scores(self, split: str, iteration: int, threshold: float | None = None) -> dict:
        """COCO AP of ``split`` and the object figures at ``threshold`` (None: the best
        threshold on this split, which is validation's business alone)."""
        start = time.perf_counter()
        results = predict_dataset(self.model, self.data[split], device=self.device, batch_size=self.batch_size,
                                  progress=self.progress)
        metrics = evaluate(self.gt[split], results, protocol="livecell")
        matches = match_images(self.gt[split], results)  # decoded and paired once, read at every threshold
        if threshold is None:
            threshold, _ = best_threshold(self.gt[split], results, matches=matches)
        matching = matching_figures(self.gt[split], results, score_threshold=threshold, matches=matches)
        if self.log is not None:
            figures = {f"{t}/{k}": v for t in ("bbox", "segm") for k, v in metrics[t].items()}
            figures.update({f"objects/{k}": matching[k] for k in ("AP50", "DSB", "F1", "score_threshold")})
            self.log(split, iteration, figures)
        self.predictions[split] = results
        self.seconds[split] += time.perf_counter() - start
        return {"bbox": metrics["bbox"], "segm": metrics["segm"], "per_cell_type": metrics["per_cell_type"],
                "matching": matching}
