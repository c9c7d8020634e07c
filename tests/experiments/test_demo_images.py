"""The demo's embedded nuclei and the CPU recipe's partition of BBBC038: the images the
demo scores on (validation, test) are in the recipe's test part, which the shipped nuclei
model never saw; the images it trains on are in the train part."""

from __future__ import annotations

from cupre.data.formats import open_dataset
from cupre.experiments.config import load_experiment
from cupre.experiments.demo import PRESETS
from cupre.experiments.grid import target_parts
from tests.helpers import CONFIGS


def demo_ids(part: str) -> set[str]:
    """The first 8 characters of the BBBC038 id of each image of the demo's ``part``."""
    return {p.stem.split("_")[1][:8] for p in (PRESETS / "nuclei" / part).glob("*.png")
            if not p.stem.endswith("_masks")}


def test_the_demo_scores_on_the_recipes_test_part_and_trains_on_its_train_part(shared_data):
    records = open_dataset(shared_data / "bbbc038" / "stage1_train", class_agnostic=True).records
    bbbc038 = {r.image_id: r.extra["id"][:8] for r in records}
    recipes = [load_experiment(CONFIGS / name).data[0] for name in ("bbbc038-cpu.yaml", "nuclei-model.yaml")]
    assert len({(tuple(d.partition), d.partition_seed) for d in recipes}) == 1  # the shipped model's partition
    parts = {part: {bbbc038[i] for i in ids} for part, ids in target_parts(recipes[0], records).items()}
    assert [len(parts[p]) for p in ("train", "val", "test")] == [465, 100, 99]
    held_out = demo_ids("validation") | demo_ids("test")
    assert len(held_out) == 10 and held_out <= parts["test"]  # 12 files: the three bright test crops share one
    trained = demo_ids("annotated") | demo_ids("unlabeled")
    assert len(trained) == 17 and trained <= parts["train"]
