"""Science check on synthetic ECGs: pre-training pays off when labels are scarce, and fewer leads
degrade gracefully.

    python benchmarks/downstream_synthetic.py --workdir /tmp/stmem_downstream_synthetic
    python benchmarks/downstream_synthetic.py --workdir /tmp/stmem_downstream_synthetic --pretrain-steps 12000

(about 1 hour, then 1.5 hours on a 2-core CPU; the second gives README.md's result)

1. generates ``--records`` synthetic ECGs (PTB-XL layout, ST-MEM split 70/10/20) and pre-trains
   ST-MEM (the tiny preset narrowed to ``--width`` x ``--depth``) on the training split for
   ``--pretrain-steps`` steps with ``stmem_jax.train.pretrain.train`` (labels unused);
2. generates the downstream dataset, ``--target-records`` ECGs of other patients (another seed),
   and runs the 12-lead grid with ``stmem_jax.grid.run_grid`` on ``--task`` (3 seeds each):
   fine-tune, linear probe and scratch at ``--fractions`` of the labels, once per peak learning
   rate of ``--lr``, in ``downstream_<steps>steps_<data>_lr<lr>``. The rates are set directly:
   the recipe's batch / 256 rule (``--lr 0``: base 1e-3 x batch / 256) leaves 100 epochs on
   ~35 examples far short of converged. Each mode keeps the rate with its best mean validation
   AUROC. Then it fine-tunes with 6 (limb) and 1 (I) leads at the smallest fraction and
   fine-tuning's rate;
3. writes the kept runs to ``downstream_<steps>steps_<data>/results.md`` and ``runs.csv``,
   prints the table and two checks: fine-tuning beats scratch at the smallest fraction by at
   least ``--margin`` macro AUROC (12 leads, mean over seeds), and 6- and 1-lead fine-tuning
   stay within ``--lead-drop`` of 12-lead. Exit status 1 when a check fails.
A rerun with the same workdir reuses the pre-training and every finished run; a rerun with more
``--pretrain-steps`` resumes the pre-training from its last checkpoint up to the new step count
(learning-rate schedule over the new total: a warm restart) and runs the grids again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/stmem_downstream_synthetic")
    p.add_argument("--records", type=int, default=20000, help="records of the pre-training source")
    p.add_argument("--target-records", type=int, default=5000,
                   help="records of the downstream dataset, a second synthetic draw apart from the pre-training "
                        "source (1%% of the labels: about 35 examples); 0: the source's own labels")
    p.add_argument("--pretrain-steps", type=int, default=3000)
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--task", default="st_mem")
    p.add_argument("--fractions", default="0.01", help="comma-separated label fractions, e.g. 0.01,0.05")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", default="1e-3,3e-3,1e-2",
                   help="comma-separated downstream peak learning rates, each mode using the one with the best "
                        "validation AUROC; 0: the recipe's base_lr x batch / 256")
    p.add_argument("--margin", type=float, default=0.05)
    p.add_argument("--lead-drop", type=float, default=0.15)
    args = p.parse_args(argv)

    from stmem_jax.cli import synthetic_dataset
    from stmem_jax.grid import run_grid, write_results
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config
    from stmem_jax.train.loop import Interrupted

    sizes = dict(width=args.width, depth=args.depth, heads=max(1, args.width // 64), mlp_dim=2 * args.width)
    start = time.time()
    config = load_config("st_mem:tiny")
    config.model.update(sizes, decoder_width=64, decoder_depth=1, decoder_heads=1)
    pretrain_dir = os.path.join(args.workdir, "pretrain")
    config.data.dir = synthetic_dataset(os.path.join(pretrain_dir, "data"), args.records)
    config.train.update(num_steps=args.pretrain_steps, warmup_steps=args.pretrain_steps // 10, lr=args.pretrain_lr)
    config.eval.every_steps = 0
    config.log.update(every_steps=100, figure_every_steps=0)
    config.checkpoint.every_steps = 500
    try:
        summary = pretrain.train(config, pretrain_dir)  # resumes; continues a shorter finished run
    except Interrupted as error:  # Ctrl-C, SIGTERM: the encoder is not the final one
        print(error, flush=True)
        return 1
    print(f"pre-training: {json.dumps(summary)}", flush=True)
    pretrain_s = time.time() - start

    fractions = tuple(float(f) for f in args.fractions.split(","))
    smallest = min(fractions)
    grid = load_config(f"grid:ptbxl:{args.task}")
    if args.target_records:  # like PTB-XL after Chapman, Ningbo and CODE-15: other patients, fewer of them
        grid.run.data.dir = synthetic_dataset(os.path.join(args.workdir, f"target{args.target_records}", "data"),
                                              args.target_records, seed=1)
        data_name = f"target{args.target_records}"
    else:
        grid.run.data.dir, data_name = os.path.join(pretrain_dir, "data", "shards"), "source"
    grid.run.model.update(sizes, preset="tiny")
    grid.run.train.epochs = args.epochs
    grid.run.eval.max_evals = 2  # validation is 10% of the records, 3 crops each: evaluation costs as much as training
    grid.run.log.every_steps = args.epochs
    grid.grid.update(methods=(f"ST-MEM={pretrain_dir}",), fractions=fractions, leads=("12",))

    def grid_dir(lr):
        return os.path.join(args.workdir, f"downstream_{args.pretrain_steps}steps_{data_name}_"
                            + (f"lr{lr:g}" if lr else "recipe_lr"))

    by_lr, lrs = {}, [float(x) for x in args.lr.split(",")]
    for lr in lrs:
        grid.run.train.lr = lr
        by_lr[lr] = run_grid(grid, grid_dir(lr))["rows"]
    rows, chosen = [], {}
    for mode in grid.grid.modes:  # each mode at its best learning rate on validation
        scores = {lr: float(np.mean([r["val_auroc"] for r in by_lr[lr] if r["mode"] == mode])) for lr in lrs}
        chosen[mode] = max(scores, key=scores.get)
        print(f"{mode}: validation AUROC " + ", ".join(f"{v:.3f} at lr {lr:g}" for lr, v in scores.items())
              + f" -> lr {chosen[mode]:g}", flush=True)
        rows += [r for r in by_lr[chosen[mode]] if r["mode"] == mode]
    grid.run.train.lr = chosen["finetune"]
    grid.grid.update(modes=("finetune",), fractions=(smallest,), leads=("limb", "1"))
    rows += run_grid(grid, grid_dir(chosen["finetune"]))["rows"]
    summary_dir = os.path.join(args.workdir, f"downstream_{args.pretrain_steps}steps_{data_name}")
    os.makedirs(summary_dir, exist_ok=True)
    print(write_results(rows, grid.grid.seeds, summary_dir))

    def auroc(mode, leads):
        return float(np.mean([r["auroc"] for r in rows if (r["mode"], r["leads"], r["label_fraction"])
                              == (mode, leads, smallest)]))

    gain = auroc("finetune", "12") - auroc("scratch", "12")
    checks = {f"fine-tune beats scratch by >= {args.margin} AUROC at {smallest:.0%} labels (got {gain:+.3f})":
              gain >= args.margin}
    for leads in ("limb", "1"):
        drop = auroc("finetune", "12") - auroc("finetune", leads)
        checks[f"{leads} leads within {args.lead_drop} AUROC of 12 leads (drop {drop:+.3f})"] = drop <= args.lead_drop
    for text, ok in checks.items():
        print(("PASS " if ok else "FAIL ") + text)
    print(f"pre-training {pretrain_s / 60:.1f} min, total {(time.time() - start) / 60:.1f} min")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
