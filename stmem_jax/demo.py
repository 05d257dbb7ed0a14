"""``stmem-demo``: ST-MEM end to end on the built-in synthetic ECGs, in minutes on a laptop CPU.

1. generates synthetic 12-lead ECGs in PTB-XL's layout (synthetic seed 1: patients the shipped
   encoder never saw) and prepares shards;
2. pre-trains the same small model (width 64, depth 2) from scratch for 100 steps on
   them: the loop, its log and its reconstruction figure, not a useful encoder yet;
3. on the ST-MEM protocol task (5 superclasses), with 1% of the labels and over the seeds, fine-tunes
   the *shipped* encoder (``stmem_jax/pretrained/synthetic-w64``: pre-trained on 20,000 other
   synthetic ECGs by the command its README gives) with 12, 6 (limb) and 1 (lead I) leads,
   linear-probes it and trains from scratch (12 leads), each mode at the learning rate
   ``benchmarks/downstream_synthetic.py`` found best on validation, each run testing its last state;
4. prints the results table in the paper's format and a line saying whether fine-tuning beat
   training from scratch beyond the spread of the seeds, and writes the figures (the shipped
   model's masked reconstruction of a test ECG, the fresh pre-training's curve, the embedding map).

Every stage runs the default recipe, the ST-MEM authors' (``config.recipe=authors``; docs/guide.md,
"The recipe"); the shipped encoder was pre-trained under stmem-jax's (its README).
``--encoder fresh`` runs step 3 on the fresh encoder of step 2 instead. Compiled steps are kept in
the persistent compilation cache (``stmem_jax.cli.use_compilation_cache``); every stage and run
is reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from stmem_jax.core import fileio


SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained", "synthetic-w64")
SMALL = dict(width=64, depth=2, heads=1, mlp_dim=128, decoder_width=64, decoder_depth=1, decoder_heads=1)
LEARNING_RATES = {"finetune": 3e-3, "scratch": 3e-3, "linprobe": 1e-2}  # best on validation, README's longer run


def verdict(rows: list[dict], fraction: float) -> str:
    """Whether 12-lead ST-MEM fine-tuning beat scratch at ``fraction`` by more than the seeds' spread,
    and on how many seeds (a seed draws the same labelled examples for both)."""
    import numpy as np

    def aurocs(mode):
        return {r["seed"]: r["auroc"] for r in rows
                if r["mode"] == mode and r["leads"] == "12" and np.isclose(r["label_fraction"], fraction)}

    tuned, scratch = aurocs("finetune"), aurocs("scratch")
    gap = float(np.mean(list(tuned.values())) - np.mean(list(scratch.values())))
    if min(len(tuned), len(scratch)) < 2:
        judged = "one seed, so no spread to judge the gap by (--seeds 0,1,2)"
    else:
        spread = float(np.std(list(tuned.values()), ddof=1) + np.std(list(scratch.values()), ddof=1))
        paired = sorted(set(tuned) & set(scratch))
        wins = sum(tuned[s] > scratch[s] for s in paired)
        judged = (f"{'within' if abs(gap) <= spread else 'beyond'} the seeds' spread ({spread:.3f}); "
                  f"ahead on {wins} of {len(paired)} seeds")
    ahead = "ahead of" if gap > 0 else "behind"
    return (f"ST-MEM fine-tuning is {abs(gap):.3f} macro AUROC {ahead} scratch at {fraction:.0%} of the labels, "
            f"{judged}")


def run_demo(workdir: str, *, records: int = 3000, pretrain_steps: int = 100, downstream_epochs: int = 100,
             fraction: float = 0.01, seeds: tuple[int, ...] = (0, 1, 2), lead_seeds: int = 1,
             encoder: str = SHIPPED) -> dict:
    """Runs the whole demo under ``workdir`` (resumable: finished stages and runs are reused) and
    returns the results table, the verdict and the figure paths. ``encoder``: a saved pre-training
    model (default the shipped one) or ``"fresh"``; the 6- and 1-lead runs use the first
    ``lead_seeds`` seeds."""
    from stmem_jax import api, methods, plots
    from stmem_jax.cli import synthetic_dataset, use_compilation_cache
    from stmem_jax.embed import embed_split
    from stmem_jax.grid import run_grid, write_results
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config

    workdir = fileio.absolute(workdir)
    use_compilation_cache()
    start, stages = time.time(), {}

    def stage(name):
        stages[name] = round(time.time() - start - sum(stages.values()))

    print(f"== 1/4 data: {records} synthetic ECGs of patients the shipped encoder never saw, in {workdir}",
          flush=True)
    data_dir = synthetic_dataset(fileio.join(workdir, "data"), records, seed=1)
    stage("data")

    print(f"== 2/4 a short fresh pre-training: the small model from scratch, {pretrain_steps} steps", flush=True)
    pretrain_dir = fileio.join(workdir, "pretrain")
    config = load_config("st_mem:tiny")
    config.model.update(SMALL)
    config.data.dir = data_dir
    config.train.update(num_steps=pretrain_steps, warmup_steps=max(1, pretrain_steps // 10), lr=1.5e-3)
    config.log.every_steps = max(1, pretrain_steps // 10)
    config.eval.every_steps = config.log.figure_every_steps = config.checkpoint.every_steps = pretrain_steps
    pretrain.train(config, pretrain_dir)  # raises loop.Interrupted when stopped by Ctrl-C / SIGTERM
    stage("fresh pre-training")

    init = pretrain_dir if encoder == "fresh" else encoder
    label = ("the fresh encoder of stage 2" if encoder == "fresh" else
             f"{init} (pre-trained for {_steps_of(init)} steps on other synthetic ECGs; see its README)")
    grid = load_config("grid:ptbxl:st_mem")
    print(f"== 3/4 downstream, {fraction:.0%} of the labels, seeds {','.join(map(str, seeds))}: fine-tune "
          f"(12, 6, 1 leads), linear probe and scratch (12 leads), the {grid.run.recipe} recipe; encoder: {label}",
          flush=True)
    grid.run.data.dir = data_dir
    grid.run.train.update(epochs=downstream_epochs, min_steps=0)  # the demo's epochs and rates (LEARNING_RATES)
    grid.run.data.val_split = ""  # no model selection: the last state is tested (in earlier demos every run chose it)
    grid.run.log.every_steps = downstream_epochs
    grid.run.model.update({k: v for k, v in SMALL.items() if k in grid.run.model}, preset="tiny")
    grid.grid.update(methods=(f"ST-MEM={init}",), fractions=(fraction,), leads=("12",))
    downstream_dir = fileio.join(workdir, "downstream")
    rows = []
    for modes, leads, run_seeds in ((("finetune", "scratch"), ("12",), seeds), (("linprobe",), ("12",), seeds),
                                    (("finetune",), ("limb", "1"), seeds[:lead_seeds])):
        grid.run.train.lr = LEARNING_RATES[modes[0]]
        grid.grid.update(modes=modes, leads=leads, seeds=tuple(run_seeds))
        rows += run_grid(grid, downstream_dir)["rows"]
    order = {("finetune", "12"): 0, ("linprobe", "12"): 1, ("scratch", "12"): 2, ("finetune", "limb"): 3}
    rows.sort(key=lambda r: order.get((r["mode"], r["leads"]), 4))
    results = write_results(rows, seeds, downstream_dir)  # every grid's runs in one results.md, runs.csv
    judged = verdict(rows, fraction)
    print(f"\n{results}\n{judged}\n", flush=True)
    stage("downstream")

    print("== 4/4 figures", flush=True)
    figures = fileio.join(workdir, "figures")
    model, variables = api.load_pretraining_model(init)  # remembers the recipe it was trained on
    ecg = api.read_ecg(_test_record(fileio.join(workdir, "data", "native")))
    reconstruction = api.reconstruct(model, variables, ecg.signal, fs=ecg.fs, leads=ecg.leads, seed=0)
    encoder_model, encoder_vars = methods.classification_encoder(model, variables)
    embedded = embed_split(encoder_model, encoder_vars, data_dir, "test", task="st_mem", recipe=api.input_recipe(init))
    paths = {
        "reconstruction": api.plot_reconstruction(reconstruction, fileio.join(figures, "reconstruction.png")),
        "fresh_reconstruction": fileio.join(pretrain_dir, "figures",
                                             sorted(fileio.listdir(fileio.join(pretrain_dir, "figures")))[-1]),
        "training_curve": plots.training_curve(fileio.join(pretrain_dir, "metrics.jsonl"),
                                               fileio.join(figures, "training_curve.png")),
        "embedding_map": plots.embedding_map(embedded["features"],
                                             [str(c) for c in embedded["classes"][embedded["label"]]],
                                             fileio.join(figures, "embedding_map.png"),
                                             title="ST-MEM encoder, synthetic test ECGs (PCA)"),
    }
    stage("figures")
    summary = {"table": results, "verdict": judged, "encoder": init, "recipe": grid.run.recipe, "figures": paths,
               "seconds": stages, "minutes": round((time.time() - start) / 60, 1)}
    with fileio.open(fileio.join(workdir, "demo_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def _test_record(native: str) -> str:
    """The WFDB header path of the first 500 Hz record of the synthetic data's test folds (9, 10)."""
    import csv

    with fileio.open(fileio.join(native, "ptbxl_database.csv"), newline="") as f:
        row = next(r for r in csv.DictReader(f) if int(r["strat_fold"]) >= 9)
    return fileio.join(native, row["filename_hr"] + ".hea")


def _steps_of(model_dir: str) -> str:
    """The pre-training steps recorded in a saved model's metadata, or "?"."""
    from stmem_jax.infer import model_directory

    with fileio.open(fileio.join(model_directory(model_dir, ("model",)), "model.json")) as f:
        meta = json.load(f).get("metadata", {})
    steps = meta.get("step") or meta.get("config", {}).get("train", {}).get("num_steps")
    return f"{steps:,}" if isinstance(steps, int) else "?"


def main(argv: list[str] | None = None) -> int:
    import inspect

    default = {k: v.default for k, v in inspect.signature(run_demo).parameters.items()}
    parser = argparse.ArgumentParser(prog="stmem-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/demo", help="where everything is written (a rerun resumes)")
    parser.add_argument("--records", type=int, default=default["records"], help="synthetic ECGs to generate")
    parser.add_argument("--pretrain-steps", type=int, default=default["pretrain_steps"],
                        help="steps of the fresh pre-training (stage 2)")
    parser.add_argument("--downstream-epochs", type=int, default=default["downstream_epochs"])
    parser.add_argument("--seeds", default=",".join(map(str, default["seeds"])),
                        help="comma-separated seeds of the downstream runs")
    parser.add_argument("--lead-seeds", type=int, default=default["lead_seeds"],
                        help="how many of the seeds the 6- and 1-lead runs use")
    parser.add_argument("--encoder", default=default["encoder"],
                        help="pre-trained model for stage 3: the shipped one (default), a stmem-pretrain workdir or "
                             "model directory, or 'fresh' (stage 2's)")
    args = parser.parse_args(argv)
    from stmem_jax.cli import guarded

    def body():
        summary = run_demo(args.workdir, records=args.records, pretrain_steps=args.pretrain_steps,
                           downstream_epochs=args.downstream_epochs, seeds=tuple(int(s) for s in args.seeds.split(",")),
                           lead_seeds=args.lead_seeds, encoder=args.encoder)
        for name, path in summary["figures"].items():
            print(f"{name:>20}: {path}")
        print("seconds by stage: " + ", ".join(f"{k} {v}" for k, v in summary["seconds"].items()))
        print(f"done in {summary['minutes']} min")

    return guarded("stmem-demo", body)

if __name__ == "__main__":
    sys.exit(main())
