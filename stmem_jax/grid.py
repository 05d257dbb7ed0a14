"""The paper's evaluation grid (command ``stmem-benchmark``): the downstream protocol as a grid of
runs, and its tables. (The speed scripts are in ``benchmarks/``.)

    stmem-benchmark --config grid:ptbxl:st_mem --workdir runs/bench --reference paper \\
        --config.grid.methods='("ST-MEM=runs/pretrain",)' --config.run.data.dir=/data/ptbxl

The grid is tasks x methods x modes x label fractions x lead settings x seeds: ``finetune`` and
``linprobe`` runs start from each method's weights (``NAME=init``, see ``config.init`` of
stmem-finetune: a workdir, a model directory, a .pth or ``random:<method or path>``), ``scratch``
runs once per point as the ``Supervised`` row, with the first method's encoder architecture;
``grid.tasks`` entries ``TASK=DIR`` give a task its own prepared folder (datasets side by side). Every
run has its own directory under ``<workdir>/runs`` (names that would share one are refused); a run
whose test metrics exist is skipped, so an interrupted grid resumes, once its recorded identity
(``config.json``: settings and the checksum of its init's weights) is the grid's: a finished run of
other weights or settings is refused before anything runs, never reported. At the end it writes
``runs.csv`` (every run) and ``results.md`` (:func:`paper_tables`: the paper's Table 1 layout
and, with several lead settings, its lead-robustness layout; ``grid.reference=paper`` puts the
paper's numbers beside ours).
"""

from __future__ import annotations

import copy
import csv
import json
import re
from collections import defaultdict
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from stmem_jax import paper_results
from stmem_jax.core import fileio


MODE_NAMES = {"finetune": "fine-tune", "linprobe": "linear probe", "scratch": "scratch"}
LEAD_SETTING_NAMES = {"12": "12-lead", "limb": "6-lead (limb)", "1": "1-lead (I)"}
SUPERVISED = paper_results.SUPERVISED  # the row of the scratch runs
CSV_FIELDS = ("task", "method", "mode", "leads", "label_fraction", "seed", "auroc", "f1", "accuracy", "fmax",
              "loss", "num_examples", "selected_step", "workdir")


class Run(NamedTuple):
    task: str
    method: str
    init: str
    mode: str
    fraction: float
    leads: str
    seed: int
    data_dir: str = ""  # the task's own prepared folder (grid.tasks entry TASK=DIR); empty: run.data.dir

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.method}-{self.mode}")
        leads = re.sub(r"[^A-Za-z0-9]", "+", self.leads)
        return "/".join((self.task, slug, f"leads-{leads}", f"fraction-{self.fraction:g}", f"seed-{self.seed}"))


def grid_runs(config: ml_collections.ConfigDict) -> list[Run]:
    """Every run of the grid, in a fixed order."""
    g = config.grid
    methods = []
    for entry in g.methods:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"grid.methods entries are NAME=path, got {entry!r}")
        methods.append((name, path))
    if not methods and set(g.modes) - {"scratch"}:
        raise ValueError("modes finetune and linprobe need pre-trained weights: set grid.methods, e.g. "
                         "--config.grid.methods='(\"ST-MEM=runs/pretrain\",)'")
    if len(g.seeds) < 3:
        print(f"note: {len(g.seeds)} seed(s); the protocol uses at least 3", flush=True)
    runs = []
    for entry in g.tasks or (config.run.data.task,):
        task, _, data_dir = entry.partition("=")
        for mode in g.modes:
            # scratch runs once per point: the first method's encoder architecture, from random weights
            for method, init in methods if mode != "scratch" else [(SUPERVISED, methods[0][1] if methods else "")]:
                for leads in g.leads:
                    for fraction in g.fractions:
                        runs.extend(Run(task, method, init, mode, float(fraction), leads, int(seed), data_dir)
                                    for seed in g.seeds)
    folders: dict[str, Run] = {}
    for run in runs:
        other = folders.setdefault(run.name, run)
        if other is not run:
            what = "is listed twice" if other == run else f"and {_describe(other)} would share one folder"
            raise ValueError(f"the grid's run {_describe(run)} {what} (runs/{run.name}): a run's folder is its task, "
                             f"method name (letters, digits and _.+- kept, the rest '_'), mode, leads, fraction and "
                             f"seed; give the methods (or tasks) names that differ there")
    return runs


def _describe(run: Run) -> str:
    return f"{run.method}={run.init or '-'} ({run.mode}, task {run.task}{'=' + run.data_dir if run.data_dir else ''})"


def run_config(config: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    """The stmem-finetune config of one run: ``config.run`` with the run's settings."""
    c = copy.deepcopy(config.run)
    c.mode, c.init = run.mode, run.init
    c.data.dir = run.data_dir or c.data.dir
    c.data.task, c.data.leads, c.data.label_fraction = run.task, run.leads, run.fraction
    c.train.seed = run.seed
    return c


def run_grid(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the missing runs of the grid on ``config.run.data.dir``, then writes ``results.md`` and
    ``runs.csv``. Returns ``{"ran": [names], "skipped": [names], "rows": [one dict per run], "table":
    markdown}``."""
    from stmem_jax.train import downstream

    workdir = fileio.absolute(workdir)
    fileio.makedirs(workdir)
    config = copy.deepcopy(config)
    if not config.run.data.dir:
        raise ValueError("the grid needs run.data.dir (a stmem-prepare output); the stmem-benchmark command "
                         "prepares the built-in synthetic data when it is empty")
    config.run.data.feature_cache = config.run.data.feature_cache or fileio.join(workdir, "features")
    reference = config.grid.get("reference", "")
    check_reference(reference)
    ran, skipped, rows = [], [], []
    runs = grid_runs(config)
    check_finished(config, runs, workdir)
    for i, run in enumerate(runs):
        directory = fileio.join(workdir, "runs", run.name)
        if fileio.isfile(fileio.join(directory, downstream.METRICS_FILE)):
            skipped.append(run.name)
        else:
            print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
            downstream.train(run_config(config, run), directory)
            ran.append(run.name)
        record = json.loads(fileio.read_text(fileio.join(directory, downstream.METRICS_FILE)))
        rows.append({**run._asdict(), "label_fraction": run.fraction, "workdir": directory,
                     "selected_step": record["selected_step"],
                     "val_auroc": (record["validation"] or {}).get("auroc"), **record["test"]})
    text = write_results(rows, config.grid.seeds, workdir, paper_tables(rows, config.grid.seeds, reference))
    return {"ran": ran, "skipped": skipped, "rows": rows, "table": text}


def check_finished(config: ml_collections.ConfigDict, runs: list[Run], workdir: str) -> None:
    """Refuses (before anything runs) a grid whose finished runs are not the grid's: a run folder whose
    ``config.json`` records another identity (``train.config.identity``: another init's weights under
    the same name, other settings) than the run the grid would make there."""
    from stmem_jax.train import config as config_lib, downstream

    checksums: dict = {}  # one checksum per init
    foreign = []
    for run in runs:
        directory = fileio.join(workdir, "runs", run.name)
        if fileio.isfile(fileio.join(directory, downstream.METRICS_FILE)):
            expected = downstream.with_identity(run_config(config, run), checksums, quiet=True)
            changed = config_lib.changes(directory, expected)
            if changed:
                foreign.append(f"runs/{run.name} ({config_lib.describe_changes(changed, most=3)})")
    if foreign:
        raise ValueError(f"{len(foreign)} finished run(s) in {workdir} are not this grid's, changed from their "
                         f"config.json: {'; '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}; move them away "
                         f"to run them again, or use another workdir")


def write_results(rows: list[dict], seeds, workdir: str, text: str | None = None) -> str:
    """Writes ``runs.csv`` and ``results.md`` (``text``, by default the :func:`table` of ``rows``) to
    ``workdir``; returns the text."""
    text = table(rows, seeds) if text is None else text
    if jax.process_index() == 0:
        with fileio.open(fileio.join(workdir, "runs.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        fileio.write_text(fileio.join(workdir, "results.md"), text)
    return text


def _cell(values: list[float], seeds: int, reference: bool = False, paper: paper_results.Value | None = None) -> str:
    """Mean ± sample std over seeds (``(n=k)`` when fewer than ``seeds``), ``-`` without runs; with
    ``reference`` the paper's number and our gap to it, or ``paper n/a``."""
    text = "-"
    if values:
        std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        note = "" if len(values) == seeds else f" (n={len(values)})"
        text = f"{np.mean(values):.3f} ± {std:.3f}{note}"
    if not reference:
        return text
    if paper is None:
        return f"{text} (paper n/a)"
    gap = f", {round(float(np.mean(values)), 3) - paper.mean:+.3f}" if values else ""  # of the printed mean
    return f"{text} (paper {paper.mean:.3f}{gap})"


def table(rows: list[dict], seeds) -> str:
    """The compact table (the demo's): one Markdown table per task, rows method (mode) x leads,
    columns label fraction x (AUROC, F1)."""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        fractions = sorted({r["label_fraction"] for r in mine})
        cells = defaultdict(list)
        for r in mine:
            cells[(r["method"], r["mode"], r["leads"], r["label_fraction"])].append(r)
        header = ["Method", "Leads"] + [f"{f:.0%} {m}" for f in fractions for m in ("AUROC", "F1")]
        lines = [f"### {task}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method, mode, leads in dict.fromkeys(k[:3] for k in cells):
            line = [f"{method} ({MODE_NAMES[mode]})", LEAD_SETTING_NAMES.get(leads, leads)]
            for f in fractions:
                runs = cells.get((method, mode, leads, f), [])
                line += [_cell([r[m] for r in runs], len(seeds)) for m in ("auroc", "f1")]
            lines.append("| " + " | ".join(line) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"



# the paper's layouts: fine-tune (with the Supervised, i.e. scratch, rows) and linear probe as row groups
SECTIONS = {"finetune": "Fine-tune", "linprobe": "Linear probe"}
SECTION_OF = {"finetune": "finetune", "scratch": "finetune", "linprobe": "linprobe"}
METRICS = {"auroc": "macro AUROC", "f1": "macro F1"}


def check_reference(reference: str) -> None:
    if reference and reference not in paper_results.REFERENCES:
        raise ValueError(f"grid.reference={reference!r}: use {' or '.join(paper_results.REFERENCES)}, or empty")


def paper_row(row: dict) -> str | None:
    """The paper's row (``paper_results.ROWS``) of one run: Supervised for scratch, the random-init
    row for a ``random:`` init, else the one its method's NAME matches."""
    from stmem_jax.train.downstream import RANDOM

    if row["mode"] == "scratch":
        return paper_results.SUPERVISED
    if str(row.get("init", "")).startswith(RANDOM):
        return paper_results.RANDOM_INIT
    return paper_results.match_row(row["method"])


def _method_order(rows: list[dict]) -> list[str]:
    """The methods of ``rows`` in the paper's row order, the others after them in grid order."""
    first = list(dict.fromkeys(r["method"] for r in rows))
    rank = {}
    for r in rows:
        row = paper_row(r)
        rank.setdefault(r["method"], paper_results.ROWS.index(row) if row else len(paper_results.ROWS)
                        + first.index(r["method"]))
    return sorted(first, key=rank.get)


def _layout(title: str, rows: list[dict], metric: str, seeds, reference: str, by_leads: bool) -> str:
    """One layout: row groups fine-tune / linear probe, rows method (x lead setting with ``by_leads``),
    column groups task x label fraction."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    columns = [(t, f) for t in tasks for f in sorted({r["label_fraction"] for r in rows if r["task"] == t})]
    lead_order = list(dict.fromkeys(r["leads"] for r in rows))
    cells, paper_rows = defaultdict(list), {}
    for r in rows:
        cells[(SECTION_OF[r["mode"]], r["method"], r["leads"], r["task"], r["label_fraction"])].append(r[metric])
        paper_rows[(SECTION_OF[r["mode"]], r["method"])] = (paper_row(r), r["mode"])
    header = ["Method"] + (["Leads"] if by_leads else []) + [f"{t} {f:.0%}" for t, f in columns]
    lines = [f"### {title}", "", f"mean ± std over {len(seeds)} seed(s) of the test {METRICS[metric]}"]
    if reference:
        datasets = ", ".join(f"{t} = {paper_results.TASK_DATASETS[t]}" for t in tasks
                             if t in paper_results.TASK_DATASETS)
        lines[-1] += (f"; (paper X, gap): {paper_results.PAPER} (sources: stmem_jax/paper_results.py), n/a: no "
                      f"public number; the paper's datasets: {datasets or 'none of these tasks'}")
    for section, name in SECTIONS.items():
        methods = [m for m in _method_order(rows) if (section, m) in paper_rows]
        if not methods:
            continue
        lines += ["", f"**{name}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            row, mode = paper_rows[(section, method)]
            for leads in [le for le in lead_order if any(k[:3] == (section, method, le) for k in cells)
                          ] if by_leads else lead_order[:1]:
                line = [method] + ([LEAD_SETTING_NAMES.get(leads, leads)] if by_leads else [])
                for task, fraction in columns:
                    paper = paper_results.lookup(row, task, mode, fraction, leads, metric) if reference else None
                    line.append(_cell(cells.get((section, method, leads, task, fraction), []), len(seeds),
                                      bool(reference), paper))
                lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def paper_tables(rows: list[dict], seeds, reference: str = "") -> str:
    """``results.md`` of a grid: the paper's Table 1 layout (rows Supervised, the random-init row,
    then the paper's rows in its order, then other methods in grid order; column groups task x label
    fraction; 12 leads, or the grid's first lead setting without 12), one table for macro AUROC and
    one for macro F1, each with fine-tune and linear probe row groups; with more than one lead
    setting, the lead-robustness layout (rows method x lead setting) for both metrics too.
    ``reference="paper"``: each cell also shows the paper's number and our gap to it
    (``stmem_jax.paper_results``)."""
    check_reference(reference)
    lead_settings = list(dict.fromkeys(r["leads"] for r in rows))
    if not rows:
        return "no runs\n"
    main = "12" if "12" in lead_settings else lead_settings[0]
    out = [_layout(f"Table 1 layout: test {METRICS[m]}, {LEAD_SETTING_NAMES.get(main, main)}",
                   [r for r in rows if r["leads"] == main], m, seeds, reference, by_leads=False) for m in METRICS]
    if len(lead_settings) > 1:
        out += [_layout(f"Lead robustness: test {METRICS[m]}", rows, m, seeds, reference, by_leads=True)
                for m in METRICS]
    return "\n\n".join(out) + "\n"
