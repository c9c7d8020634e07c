"""A grid of initialisations x label fractions x seeds on shared pre-training (Table II).

``cupre experiment CONFIG -o OUT`` pre-trains once, writes the partition and the few-shot
splits once, fine-tunes every cell (method x fraction x seed) with the same schedule,
evaluates each on validation (and test) under the LIVECell protocol, and writes::

    OUT/config.yaml                          the resolved experiment config
    OUT/data/objects/                        synthetic objects padding COCO (synthetic_objects.images > 0)
    OUT/data/cells/                          synthetic cells (synthetic_cells.images > 0; "{out}/data/cells/...")
    OUT/shipped/<name>/                      a model shipped with cupre scored as it is, before anything
                                             trains (`shipped: [nuclei]`; cupre.experiments.shipped_rows)
    OUT/pretrain/                            one `cupre pretrain` run shared by every cell
                                             (pretrain_per_seed: OUT/pretrain/s<seed>/, one per seed)
    OUT/splits/{train,val,test}.json         the seeded partition of the labeled dataset
    OUT/splits/f<fraction>-s<seed>.json      the few-shot split of the train part
    OUT/cells/<method>/f<fraction>/s<seed>/  a `cupre finetune` run (val as it goes, test once: the chosen model)
    OUT/cells/<method>+st/f<fraction>/s<seed>/  self-training from the <method> cell (cupre.experiments.selftrain)
    OUT/results.csv                          every evaluation row, rebuilt from the cells
    OUT/table2.md                            Table II (iteration chosen on validation only)
    OUT/figures/*.png                        Fig. 3, 4, 6 and 8 of the paper (each where it has something to show)
    OUT/report.html                          one page: the table, the figures, where the time went

With several datasets under ``data:``, splits and cells get a ``<dataset>/`` level. Running
the same command again continues: finished cells are skipped, an interrupted cell resumes
from its ``state.pt``, pre-training resumes where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from cupre.errors import CupreError
from cupre.experiments.config import ExperimentConfig, check_inputs_exist, dataset_name, in_folder
from cupre.experiments.grid import (
    Cell,
    cell_config,
    check_same_config,
    plan_cells,
    prepare_target,
    pretrain_config,
    pretrain_dirs,
    write_synthetic_data,
)
from cupre.experiments.parallel import run_cell, run_cells
from cupre.experiments.progress import CellProgress, duration
from cupre.experiments.report import add_time, cell_seconds, write_report
from cupre.experiments.shipped_rows import ShippedRow, plan_shipped, score_shipped
from cupre.fileio import write_text_atomic
from cupre.methods import base_method, needed_products
from cupre.train.inits import pretrain_done
from cupre.train.run import Run


def run_experiment(cfg: ExperimentConfig, out: str | Path, *, only_methods: list[str] | None = None,
                   dry_run: bool = False, summary: Callable[[list[dict], float], str] | None = None) -> str:
    """Run (or continue) the grid into ``out``; returns the Table II markdown.

    Args:
        cfg: a config from :func:`load_experiment` (paths absolute).
        out: the experiment folder.
        only_methods: run only these methods (the table still shows every finished cell).
        dry_run: print the plan and what is already done; write nothing.
        summary: ``summary(rows, wall_seconds)`` -> markdown for the person who ran it
            (the demo's): printed at the end instead of the tables, and the report's top.
    """
    started = time.time()
    import torch

    from cupre.experiments.table import collect_results, write_results_csv
    from cupre.train import distributed
    from cupre.train.pretrain import run_pretrain

    out = Path(out)
    methods = list(only_methods or cfg.methods)
    unknown = [m for m in methods if m not in cfg.methods]
    if unknown:
        raise CupreError(f"--only-method {unknown[0]}: not among the config's methods ({', '.join(cfg.methods)})")
    check_inputs_exist(cfg, pretraining=bool(needed_products(methods)))
    if not dry_run:
        Run(out, tensorboard=False).save_config(cfg.to_dict())
        for kind, synth in (("objects", cfg.synthetic_objects), ("cells", cfg.synthetic_cells)):
            if synth.images > 0:
                write_synthetic_data(kind, synth, out / "data" / kind)
    cfg = in_folder(cfg, out)
    targets = [prepare_target(cfg, d, out, single=len(cfg.data) == 1, write=not dry_run) for d in cfg.data]
    cells = plan_cells(cfg, targets, methods)
    shipped = plan_shipped(list(cfg.shipped), targets, out)
    dirs = pretrain_dirs(cfg, out)
    pres = {folder: pretrain_config(cfg, methods, out, targets, seed=seed if cfg.pretrain_per_seed else None)
            for seed, folder in dirs.items()}
    bases = sorted({base_method(m) for m in methods})
    todo = {folder: pre for folder, pre in pres.items() if pre is not None and not pretrain_done(folder, bases)}
    pre_state = ("not needed" if all(p is None for p in pres.values()) else "done" if not todo
                 else f"to run ({len(todo)} of {len(pres)})" if cfg.pretrain_per_seed else "to run")
    print(f"experiment: pre-training {pre_state}; {len(cells)} cells, {sum(c.finished for c in cells)} finished")
    if dry_run:
        for row in shipped:
            print(f"  {row.folder.relative_to(out)}: {'done' if row.finished else 'to score'}")
        for c in cells:
            state = "done" if c.finished else "partial" if (c.folder / "state.pt").is_file() else "to run"
            print(f"  {c.folder.relative_to(out)}: {state}")
        return ""
    if distributed.is_main():  # seconds, before anything trains
        score_shipped(shipped, device=cfg.device, precision=cfg.precision, batch_size=cfg.finetune.eval_batch_size,
                      select_by=cfg.select_by)
    t0 = time.time()
    for folder, pre in todo.items():
        started = time.time()
        run_pretrain(pre, folder)
        add_time(out, str(folder.relative_to(out)), time.time() - started)
        print(f"experiment: pre-training {folder.relative_to(out)} done after {time.time() - t0:.0f} s")
    everything = plan_cells(cfg, targets, list(cfg.methods))  # results.csv covers the whole grid
    scored = [k for row in shipped for k in row.keys(list(cfg.seeds))] + [(c.key, c.folder) for c in everything]
    waves: list[list] = [[], []]  # fine-tuning cells, then the self-training cells that start from them
    names: dict[Path, str] = {}  # cell folder -> its name in progress lines
    for i, cell in enumerate(cells, start=1):
        ft = cell_config(cfg, cell, dirs[cell.seed])
        check_same_config(cell, ft)
        label = f"experiment: cell {i}/{len(cells)} {cell.target.name} {cell.method} f{cell.fraction:g} s{cell.seed}"
        if cell.finished:
            print(f"{label}: finished before")
        else:
            teacher = cell.teacher.folder if cell.teacher else None
            waves[teacher is not None].append(((label, cell.folder), ft, cell.folder, teacher))
            names[cell.folder] = short_label(cfg, cell)

    def done(key: tuple[str, Path]) -> None:
        label, folder = key
        print(f"{label}: done after {time.time() - t0:.0f} s ({where_time_went(folder)})", flush=True)
        if distributed.is_main():
            write_results_csv(collect_results(scored), out / "results.csv")

    for jobs in waves:
        parallel = min(cfg.parallel, len(jobs)) if distributed.world_size() == 1 else 1
        if parallel > 1:
            threads = max(1, torch.get_num_threads() // parallel)
            print(f"experiment: {len(jobs)} cells to run, {parallel} at a time on {threads} thread(s) each "
                  "(a line each tenth of their steps)", flush=True)
            progress = CellProgress([(names[folder], folder, ft.optim.iterations) for _, ft, folder, _ in jobs])

            def tick() -> None:
                line = progress.poll()
                if line:
                    print(line, flush=True)

            def finished(key: tuple[str, Path]) -> None:
                progress.finished(key[1])
                done(key)

            run_cells(jobs, parallel=parallel, threads=threads, on_done=finished, on_tick=tick)
        else:
            for key, ft, folder, teacher in jobs:
                run_cell(ft, folder, teacher)
                done(key)
    if not distributed.is_main():
        return ""
    return report(cfg, out, everything, shipped, started=started, summary=summary)


def short_label(cfg: ExperimentConfig, cell: Cell) -> str:
    """A cell's name in a progress line: its method, with its dataset, fraction and seed
    only where the grid has several of them."""
    several_fractions = len({f for d in cfg.data for f in (d.fractions or cfg.fractions)}) > 1
    return " ".join([*([cell.target.name] if len(cfg.data) > 1 else []), cell.method,
                     *([f"f{cell.fraction:g}"] if several_fractions else []),
                     *([f"s{cell.seed}"] if len(cfg.seeds) > 1 else [])])


def where_time_went(cell_folder: Path) -> str:
    """``"412 s: training 300, val 80, test 32"`` from a finished cell's val_metrics.json."""
    seconds = cell_seconds(cell_folder)
    parts = ", ".join(f"{k} {v:.0f}" for k, v in seconds.items() if k != "total")
    return f"{seconds.get('total', 0):.0f} s: {parts}" if seconds else "no timing"


def protocol(cfg: ExperimentConfig) -> str:
    """What the table's figures rest on: how the test part was chosen and whether
    pre-training saw its images, and how often pre-training ran."""
    lines = []
    for d in cfg.data:
        test = (f"whole acquisitions {', '.join(d.test_groups)} (never among the labels)" if d.test_groups
                else "a separate set" if d.test else "a part stratified like the labels"
                if len(d.partition) == 3 else None)
        if test is None:
            lines.append(f"- {dataset_name(d)}: no test part")
            continue
        seen = ("transductive: its images (never their labels) were among pre-training's unlabeled images"
                if d.transductive else "inductive: pre-training never saw its images")
        lines.append(f"- {dataset_name(d)}: test part = {test}; {seen}")
    runs = ("once per seed (the spread includes pre-training's own variance)" if cfg.pretrain_per_seed
            else "once, shared by every seed (the spread covers fine-tuning only)")
    return "### Protocol\n\n" + "\n".join(lines) + f"\n- pre-training: {runs}"


def report(cfg: ExperimentConfig, out: Path, cells: list[Cell], shipped: list[ShippedRow] | None = None, *,
           started: float | None = None, summary: Callable[[list[dict], float], str] | None = None) -> str:
    """results.csv, table2.md, the figures and report.html from every finished cell of the
    grid, the shipped models' rows first; prints the tables (or ``summary``'s text)."""
    import torch

    from cupre.experiments.plots import make_figures
    from cupre.experiments.table import (
        collect_results,
        format_per_kind,
        format_table2,
        write_results_csv,
    )

    shipped = [row for row in shipped or [] if row.finished]
    keyed = [k for row in shipped for k in row.keys(list(cfg.seeds))] + [(c.key, c.folder) for c in cells]
    methods = [*dict.fromkeys(row.method for row in shipped), *cfg.methods]
    rows = collect_results(keyed)
    write_results_csv(rows, out / "results.csv")
    text = protocol(cfg) + "\n\n" + format_table2(rows, methods=methods, select_by=cfg.select_by)
    per_kind = format_per_kind(keyed, methods=methods)
    text += f"\n\n{per_kind}" if per_kind else ""
    write_text_atomic(out / "table2.md", text + "\n")
    make_figures(collect_results([(c.key, c.folder) for c in cells]), out / "figures", methods=list(cfg.methods),
                 select_by=cfg.select_by)
    draw_overlays(cfg, out, cells, shipped)
    wall = None if started is None else time.time() - started
    guide = summary(rows, wall or 0.0) if summary is not None else None
    names = ", ".join(dataset_name(d) for d in cfg.data)
    finished = [(f"{row.method}", row.folder) for row in shipped]
    finished += [(f"{c.method} f{c.fraction:g} s{c.seed}", c.folder) for c in cells if c.finished]
    page = write_report(out, title=f"cupre experiment: {names}", table=text, cells=finished, summary=guide,
                        wall_seconds=wall,
                        settings=f"device {cfg.device}, precision {cfg.precision}, {torch.get_num_threads()} "
                                 f"thread(s), torch {torch.__version__}")
    print(guide if guide is not None else text)
    if guide is None and wall is not None:
        print(f"\nexperiment: {duration(wall)} (wall clock, this run)")
    print(f"\nreport: {page}")
    return text


def draw_overlays(cfg: ExperimentConfig, out: Path, cells: list[Cell], shipped: list[ShippedRow]) -> None:
    """Fig. 8 per target: the held-out images with the ground truth, each shipped model's
    masks, then each overlay method's (first fraction, first seed)."""
    from cupre.experiments.overlays import render_overlays

    for target in {c.target.name: c.target for c in cells}.values():
        chosen = [c for c in cells if c.target is target and c.method in cfg.overlays.methods and c.finished
                  and c.fraction == min(target.fractions) and c.seed == cfg.seeds[0]]
        if chosen and cfg.overlays.images > 0:
            suffix = "" if len(cfg.data) == 1 else f"_{target.name}"
            data, split, part = ((target.test, target.test_split, "test") if target.test
                                 else (target.val, target.val_split, "val"))
            models = {row.method: row.folder for row in shipped if row.target is target}
            models.update({c.method: c.folder for c in chosen})
            render_overlays(data, split, {m: folder / f"predictions_{part}.json" for m, folder in models.items()},
                            out / "figures" / f"fig8_overlays{suffix}.png", n_images=cfg.overlays.images,
                            score_threshold=cfg.overlays.score_threshold, panel_size=cfg.overlays.panel_size)
