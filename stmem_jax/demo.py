"""``stmem-demo``: ST-MEM end to end on the built-in synthetic ECGs, in minutes on a laptop CPU.

Generates synthetic 12-lead ECGs in PTB-XL's layout, prepares shards, pre-trains the tiny model,
then on the ST-MEM protocol task (5 superclasses) fine-tunes with 1% of the labels (12, 6 (limb)
and 1 (lead I) leads), trains from scratch and linear-probes (12 leads), and prints
the results table in the paper's format, a line saying whether fine-tuning beat training from
scratch beyond the spread of the seeds, and the paths of its figures (masked reconstruction,
training curve, embedding map). Compiled steps are kept in the persistent compilation cache
(``stmem_jax.cli.use_compilation_cache``), so later stages and reruns load them. Run from a clone
of the repository (it reads ``configs/``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_file(*parts: str) -> str:
    path = os.path.join(REPO, "configs", *parts)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: run stmem-demo from a clone of the repository")
    return path


def verdict(rows: list[dict], fraction: float) -> str:
    """Whether 12-lead ST-MEM fine-tuning beat scratch at ``fraction`` by more than the seeds' spread."""
    import numpy as np

    def aurocs(mode):
        return [r["auroc"] for r in rows
                if r["mode"] == mode and r["leads"] == "12" and np.isclose(r["label_fraction"], fraction)]

    tuned, scratch = aurocs("finetune"), aurocs("scratch")
    gap = float(np.mean(tuned) - np.mean(scratch))
    if min(len(tuned), len(scratch)) < 2:
        judged = "one seed, so no spread to judge the gap by (--seeds 0,1,2)"
    else:
        spread = float(np.std(tuned, ddof=1) + np.std(scratch, ddof=1))
        judged = f"{'within' if abs(gap) <= spread else 'beyond'} the seeds' spread ({spread:.3f})"
    ahead = "ahead of" if gap > 0 else "behind"
    return (f"ST-MEM fine-tuning is {abs(gap):.3f} macro AUROC {ahead} scratch at {fraction:.0%} of the labels, "
            f"{judged}")


def run_demo(workdir: str, *, records: int = 2000, pretrain_steps: int = 300, downstream_epochs: int = 50,
             fraction: float = 0.01, seeds: tuple[int, ...] = (0,), tiny_model: dict | None = None) -> dict:
    """Runs the whole demo under ``workdir`` (resumable: finished stages are reused). Returns the
    results table and the figure paths."""
    from stmem_jax import plots
    from stmem_jax.cli import synthetic_dataset, use_compilation_cache
    from stmem_jax.embed import embed_split
    from stmem_jax.grid import run_grid, write_results
    from stmem_jax.infer import load_encoder
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config

    workdir = os.path.abspath(workdir)
    use_compilation_cache()
    start = time.time()
    print(f"== 1/3 data and pre-training ({records} synthetic ECGs, {pretrain_steps} steps) in {workdir}", flush=True)
    pretrain_dir = os.path.join(workdir, "pretrain")
    data_dir = synthetic_dataset(os.path.join(pretrain_dir, "data"), records)
    config = load_config(config_file("pretrain", "st_mem.py"), "tiny")
    config.data.dir = data_dir
    config.train.num_steps = pretrain_steps
    config.train.warmup_steps = max(1, pretrain_steps // 10)
    config.train.lr = 1e-3  # a short run: above the recipe's batch / 256 scaling
    config.log.every_steps = max(1, pretrain_steps // 10)
    config.eval.every_steps = config.log.figure_every_steps = config.checkpoint.every_steps = pretrain_steps
    for field, value in (tiny_model or {}).items():
        config.model[field] = value
    pretrain.train(config, pretrain_dir)  # raises loop.Interrupted when stopped by Ctrl-C / SIGTERM

    print("== 2/3 downstream, 1% labels: fine-tune (12, 6, 1 leads), linear probe and scratch (12 leads)", flush=True)
    grid = load_config(config_file("downstream", "grid.py"), "ptbxl:st_mem")
    grid.run.data.dir = data_dir
    grid.run.train.epochs = downstream_epochs
    grid.run.train.lr = 1e-3  # the recipe's batch / 256 scaling gives almost nothing with a 1% split this small
    grid.run.eval.max_evals = 2
    grid.run.model.preset = "tiny"
    for field, value in (tiny_model or {}).items():
        if field in grid.run.model:
            grid.run.model[field] = value
    grid.grid.update(methods=(f"ST-MEM={pretrain_dir}",), fractions=(fraction,), seeds=tuple(seeds), leads=("12",))
    downstream_dir = os.path.join(workdir, "downstream")
    rows = run_grid(grid, downstream_dir)["rows"]
    grid.grid.update(modes=("finetune",), leads=("limb", "1"))
    rows += run_grid(grid, downstream_dir)["rows"]
    results = write_results(rows, grid.grid.seeds, downstream_dir)  # both grids' runs in one results.md, runs.csv
    print(f"\n{results}\n{verdict(rows, fraction)}\n", flush=True)

    print("== 3/3 figures", flush=True)
    figures = os.path.join(workdir, "figures")
    reconstructions = sorted(os.listdir(os.path.join(pretrain_dir, "figures")))
    encoder, variables = load_encoder(pretrain_dir)
    test = embed_split(encoder, variables, data_dir, "test", task="st_mem")
    paths = {
        "reconstruction": os.path.join(pretrain_dir, "figures", reconstructions[-1]),
        "training_curve": plots.training_curve(os.path.join(pretrain_dir, "metrics.jsonl"),
                                               os.path.join(figures, "training_curve.png")),
        "embedding_map": plots.embedding_map(test["features"], [str(c) for c in test["classes"][test["label"]]],
                                             os.path.join(figures, "embedding_map.png"),
                                             title="ST-MEM encoder, synthetic test ECGs (PCA)"),
    }
    summary = {"table": results, "verdict": verdict(rows, fraction), "figures": paths,
               "minutes": round((time.time() - start) / 60, 1)}
    with open(os.path.join(workdir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stmem-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="where everything is written (a rerun resumes)")
    parser.add_argument("--records", type=int, default=2000, help="synthetic ECGs to generate")
    parser.add_argument("--pretrain-steps", type=int, default=300)
    parser.add_argument("--downstream-epochs", type=int, default=50)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the downstream runs")
    args = parser.parse_args(argv)
    from stmem_jax.train.loop import Interrupted

    try:
        summary = run_demo(args.workdir, records=args.records, pretrain_steps=args.pretrain_steps,
                           downstream_epochs=args.downstream_epochs,
                           seeds=tuple(int(s) for s in args.seeds.split(",")))
    except Interrupted as error:
        print(error, file=sys.stderr)
        return 128 + error.signum
    for name, path in summary["figures"].items():
        print(f"{name:>15}: {path}")
    print(f"done in {summary['minutes']} min")
    return 0
