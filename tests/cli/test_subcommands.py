"""The index of where each subcommand runs end to end through the command line and ends
well (exit 0) on tiny generated data. Those tests live beside what each command drives
(tests/<package>/); this index fails when a command is added without one, or when a test
named here no longer runs its command."""

from __future__ import annotations

import ast

from cupre.cli import COMMANDS
from tests.helpers import REPO

END_TO_END = {
    "train": "tests/experiments/test_workflow.py::few",  # the fixture every workflow test reads
    "demo": "tests/experiments/test_demo.py::test_the_real_nuclei_demo_scores_held_out_images_and_writes_its_report",
    "synth": "tests/data/test_synthetic.py::test_cli_synth",
    "convert": "tests/data/test_convert.py::test_cli_round_trip_of_real_coco_mini",
    "split": "tests/data/test_splits.py::test_cli_split_on_synthetic_cells",
    "evaluate": "tests/evaluation/test_evaluate_cli.py::test_evaluate_writes_metrics",
    "pretrain": "tests/train/test_distributed.py::test_two_process_pretrain_and_finetune",  # under torchrun
    "finetune": "tests/train/test_procedures.py::test_finetune_cli_and_refusal_to_overwrite",
    "experiment": "tests/experiments/test_experiment.py::test_rerun_skips_finished_cells",
    "predict": "tests/inference/test_predict.py::test_predict_real_images_writes_consistent_outputs",
    "export": "tests/export/test_torchscript.py::test_cli_writes_a_file_that_torch_alone_loads_and_that_matches_predict",
    "convert-model": "tests/test_modelfile.py::test_a_legacy_pickle_converts_without_unpickling_code",
}


def test_every_subcommand_has_an_end_to_end_test_through_the_command_line():
    assert set(END_TO_END) == set(COMMANDS)
    for command, where in END_TO_END.items():
        path, name = where.split("::")
        source = (REPO / path).read_text()
        [function] = [node for node in ast.walk(ast.parse(source))
                      if isinstance(node, ast.FunctionDef) and node.name == name]
        body = ast.get_source_segment(source, function)
        assert f'"{command}"' in body and "== 0" in body, f"{where} does not run `cupre {command}` to exit 0"
