"""Configs and flags are checked before anything runs, and a refused run leaves nothing behind."""

from __future__ import annotations

import pytest

from cupre.cli import main as cli
from cupre.data.synthetic import write_synthetic


@pytest.fixture(scope="module")
def cells(tmp_path_factory):
    root = tmp_path_factory.mktemp("cells")
    write_synthetic("cells", root, n_images=4, size=64, seed=0)
    return root / "annotations.json"


@pytest.mark.parametrize("flags, problem", [
    (["--iterations", "-5"], "optim.iterations: input should be greater than or equal to 1, got -5"),
    (["--batch-size", "0"], "optim.batch_size: input should be greater than or equal to 1, got 0"),
    (["--lr", "0"], "optim.lr: input should be greater than 0, got 0"),
    (["--fraction", "1.5"], "fraction: input should be less than or equal to 1, got 1.5"),
])
def test_bad_finetune_flags_are_refused_up_front(cells, tmp_path, capsys, flags, problem):
    out = tmp_path / "run"
    assert cli(["finetune", "--init", "scratch", "--train", str(cells), "-o", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert problem in err and err.count("\n") == 1 and not out.exists()


def test_missing_inputs_leave_no_half_made_run_folder(cells, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["finetune", "--init", "scratch", "--train", str(tmp_path / "nope.json"), "-o", str(out)]) == 2
    assert "nope.json" in capsys.readouterr().err and not out.exists()
    assert cli(["finetune", "--init", "cupre", "--from", str(tmp_path / "nopre"), "--train", str(cells),
                "-o", str(out)]) == 2
    assert "has the pretrain run finished" in capsys.readouterr().err and not out.exists()


def test_resume_refuses_flags_it_would_ignore(cells, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text(f"init: scratch\ntrain: {cells}\n")  # a stopped run's resolved config
    assert cli(["finetune", "-o", str(out), "--resume", "--iterations", "50"]) == 2
    assert "--iterations would be ignored" in capsys.readouterr().err
    assert cli(["pretrain", "some.yaml", "-o", str(out), "--resume"]) == 2
    assert "some.yaml would be ignored" in capsys.readouterr().err


def test_experiment_with_a_missing_dataset_writes_nothing(cells, tmp_path, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text(f"data: {{labeled: {cells}, partition: [1.0], val: {tmp_path / 'val.json'}}}\n"
                      "methods: [scratch]\nseeds: [0]\nfractions: [0.5]\n")
    out = tmp_path / "exp"
    assert cli(["experiment", str(config), "-o", str(out)]) == 2
    assert f"data.val: {tmp_path / 'val.json'} not found" in capsys.readouterr().err and not out.exists()
    config.write_text(config.read_text() + "eval_every: 0\n")
    assert cli(["experiment", str(config), "-o", str(out)]) == 2
    assert "eval_every: input should be greater than or equal to 1, got 0" in capsys.readouterr().err


def test_version_names_cupre_and_its_torch(capsys):
    from importlib.metadata import version

    import cupre

    with pytest.raises(SystemExit) as done:
        cli(["--version"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cupre {cupre.__version__} (torch {version('torch')}")
    assert version("cupre") == cupre.__version__  # the installed metadata reads the same attribute


def test_finetune_help_shows_every_default_and_the_example_config_is_the_defaults(capsys):
    from cupre.config import FinetuneConfig, load_yaml
    from tests.helpers import CONFIGS

    with pytest.raises(SystemExit):
        cli(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("(default 600)", "(default 2, random 256 px crops", "(default 0.0005, adamw", "(default cupre)"):
        assert shown in text
    example = FinetuneConfig.from_dict(load_yaml(CONFIGS / "finetune-cpu.yaml"))
    assert example.to_dict() == FinetuneConfig().to_dict()
