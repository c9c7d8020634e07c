"""The table of methods (cupre.methods) is what the config, the loader, the CLI, the grid and
the Table II writer read."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from cupre.config import FinetuneConfig, PretrainConfig
from cupre.errors import CupreError
from cupre.methods import ABLATIONS, METHOD_NAMES, METHODS, PRODUCTS, REFERENCES, SELF_TRAIN, method_label


def test_every_method_is_an_init_the_config_and_the_loader_accept(tmp_path):
    from cupre.train.inits import product_files

    def pretrain_folder(without: str | None) -> Path:
        folder = tmp_path / f"without-{without}"
        for product in PRODUCTS.values():
            if product.name != without:
                (folder / product.file).parent.mkdir(parents=True, exist_ok=True)
                (folder / product.file).touch()
        return folder

    done = pretrain_folder(None)
    for name, method in METHODS.items():
        assert FinetuneConfig.from_dict({"init": name}).init == name
        assert product_files(name, done) == {p: done / PRODUCTS[p].file for p in method.products}
        for product in method.products:  # a missing product is named, with the setting that makes it
            setting = PRODUCTS[product].setting
            with pytest.raises(CupreError, match=re.escape(PRODUCTS[product].file) + ".*"
                               + (re.escape(f"(pretrain with {setting}: true)") if setting else "finished[?]$")):
                product_files(name, pretrain_folder(product))
    with pytest.raises(CupreError, match=re.escape(", ".join(METHOD_NAMES))):
        product_files("imagenet", done)


def test_the_cli_and_the_experiment_config_offer_the_table():
    from cupre.cli import build_parser
    from cupre.experiments.config import ExperimentConfig, validate

    sub = build_parser(only="finetune")._subparsers._group_actions[0].choices["finetune"]
    (init,) = [a for a in sub._actions if "--init" in a.option_strings]
    offered = re.split(r", | or ", init.help.split(" (default")[0])
    assert offered == list(METHOD_NAMES)
    for name in METHOD_NAMES:
        validate(ExperimentConfig.from_dict({"data": [{"labeled": "x"}], "methods": [name, name + SELF_TRAIN]}), "t")
    with pytest.raises(CupreError, match=re.escape(", ".join(METHOD_NAMES))):
        validate(ExperimentConfig.from_dict({"data": [{"labeled": "x"}], "methods": ["imagenet"]}), "t")


def test_the_grid_asks_pretraining_for_exactly_the_products_each_method_loads(tmp_path):
    from cupre.experiments.config import ExperimentConfig
    from cupre.experiments.grid import pretrain_config

    flags = {p.name: p.setting for p in PRODUCTS.values() if p.setting}
    assert all(PretrainConfig.model_fields[s].annotation in (bool, "bool") for s in flags.values())
    for name, method in METHODS.items():
        assert set(method.products) <= set(PRODUCTS)
        for asked in ([name], [name + SELF_TRAIN]):
            pre = pretrain_config(ExperimentConfig(), asked, tmp_path, [])
            if not method.products:
                assert pre is None
                continue
            assert {p for p, s in flags.items() if getattr(pre, s)} == set(method.products) & set(flags)


def test_labels_are_unique_and_are_what_table_ii_shows(monkeypatch):
    from cupre import methods
    from cupre.experiments.table import format_table2

    assert len({m.label for m in METHODS.values()}) == len(METHODS)
    assert set(REFERENCES) | set(ABLATIONS) <= set(METHOD_NAMES)
    monkeypatch.setitem(methods.METHODS, "cupre", dataclasses.replace(METHODS["cupre"], label="CUPre"))
    assert method_label("cupre+st") == "CUPre+st" and method_label("nuclei (shipped)") == "nuclei (shipped)"
    rows = [{"dataset": "d", "method": m, "fraction": 0.1, "seed": 0, "iteration": 10, "split": "val",
             "bbox_AP": 0.3, "segm_AP": 0.2} for m in ("scratch", "cupre")]
    table = format_table2(rows, methods=list(METHOD_NAMES))
    assert "| CUPre | 30.0 (1 seed) | 20.0 (1 seed) |" in table
    assert "| CUPre − scratch |" in table
    assert "| cupre " not in table
