"""The paper's evaluation grid (command ``stmem-benchmark``): the downstream protocol as a grid of
runs, and its table. (The speed scripts are in ``benchmarks/``.)

    stmem-benchmark --config grid:ptbxl:st_mem --workdir runs/bench \\
        --config.grid.methods='("ST-MEM=runs/pretrain",)' --config.run.data.dir=/data/ptbxl

The grid is tasks x methods x modes x label fractions x lead settings x seeds: ``finetune`` and
``linprobe`` runs start from each method's weights (``NAME=path``, see ``config.init`` of
stmem-finetune), ``scratch`` runs once per point as the ``Supervised`` row, with the first method's
encoder architecture. Every run has its own
directory under ``<workdir>/runs``; a run whose test metrics exist is skipped, so an interrupted
grid resumes. The Markdown table (``results.md``: rows method (mode) and leads, columns label
fractions, cells mean +- std over seeds of the test macro AUROC and macro F1) and a CSV of every run
(``runs.csv``) are written at the end.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
from collections import defaultdict
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np


MODE_NAMES = {"finetune": "fine-tune", "linprobe": "linear probe", "scratch": "scratch"}
LEAD_SETTING_NAMES = {"12": "12-lead", "limb": "6-lead (limb)", "1": "1-lead (I)"}
SUPERVISED = "Supervised"
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

    @property
    def name(self) -> str:
        slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{self.method}-{self.mode}")
        leads = re.sub(r"[^A-Za-z0-9]", "+", self.leads)
        return os.path.join(self.task, slug, f"leads-{leads}", f"fraction-{self.fraction:g}", f"seed-{self.seed}")


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
    for task in g.tasks or (config.run.data.task,):
        for mode in g.modes:
            # scratch runs once per point: the first method's encoder architecture, from random weights
            for method, init in methods if mode != "scratch" else [(SUPERVISED, methods[0][1] if methods else "")]:
                for leads in g.leads:
                    for fraction in g.fractions:
                        runs.extend(Run(task, method, init, mode, float(fraction), leads, int(seed))
                                    for seed in g.seeds)
    return runs


def run_config(config: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    """The stmem-finetune config of one run: ``config.run`` with the run's settings."""
    c = copy.deepcopy(config.run)
    c.mode, c.init = run.mode, run.init
    c.data.task, c.data.leads, c.data.label_fraction = run.task, run.leads, run.fraction
    c.train.seed = run.seed
    return c


def run_grid(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs the missing runs of the grid on ``config.run.data.dir``, then writes ``results.md`` and
    ``runs.csv``. Returns ``{"ran": [names], "skipped": [names], "rows": [one dict per run], "table":
    markdown}``."""
    from stmem_jax.train import downstream

    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    config = copy.deepcopy(config)
    if not config.run.data.dir:
        raise ValueError("the grid needs run.data.dir (a stmem-prepare output); the stmem-benchmark command "
                         "prepares the built-in synthetic data when it is empty")
    config.run.data.feature_cache = config.run.data.feature_cache or os.path.join(workdir, "features")
    ran, skipped, rows = [], [], []
    runs = grid_runs(config)
    for i, run in enumerate(runs):
        directory = os.path.join(workdir, "runs", run.name)
        if os.path.isfile(os.path.join(directory, downstream.METRICS_FILE)):
            skipped.append(run.name)
        else:
            print(f"[{i + 1}/{len(runs)}] {run.name}", flush=True)
            downstream.train(run_config(config, run), directory)
            ran.append(run.name)
        with open(os.path.join(directory, downstream.METRICS_FILE)) as f:
            record = json.load(f)
        rows.append({**run._asdict(), "label_fraction": run.fraction, "workdir": directory,
                     "selected_step": record["selected_step"],
                     "val_auroc": (record["validation"] or {}).get("auroc"), **record["test"]})
    return {"ran": ran, "skipped": skipped, "rows": rows, "table": write_results(rows, config.grid.seeds, workdir)}


def write_results(rows: list[dict], seeds, workdir: str) -> str:
    """Writes ``runs.csv`` and ``results.md`` (the :func:`table` of ``rows``) to ``workdir``; returns
    the table."""
    text = table(rows, seeds)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "runs.csv"), "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        with open(os.path.join(workdir, "results.md"), "w") as f:
            f.write(text)
    return text


def _cell(values: list[float], seeds: int) -> str:
    if not values:
        return "-"
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    note = "" if len(values) == seeds else f" (n={len(values)})"
    return f"{np.mean(values):.3f} ± {std:.3f}{note}"


def table(rows: list[dict], seeds) -> str:
    """One Markdown table per task: rows method (mode) x leads, columns label fraction x (AUROC, F1)."""
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

