"""The paper's two tables on synthetic ECGs: every method pre-trained small, then the grid, printed
with the paper's numbers beside ours (``grid.reference=paper``).

    python benchmarks/paper_tables.py --workdir /tmp/stmem_paper_tables
    python benchmarks/paper_tables.py --workdir /tmp/stmem_paper_tables_trial --methods st_mem,mtae \\
        --fractions 0.05,1.0

1. generates ``--records`` synthetic ECGs (seed 0) and pre-trains each method of :data:`METHODS`
   (``--methods``: a subset, by key) on them for ``--pretrain-steps`` steps, with the demo's small
   model (width 64, depth 2) where the method's config has those fields, in ``<workdir>/pretrain/<key>``
   (``stmem_jax.train.pretrain.train``);
2. generates the downstream dataset, ``--target-records`` ECGs of other patients (synthetic seed 1),
   and runs the grid on its ``st_mem`` task (``stmem_jax.grid.run_grid``, ``--seeds`` seeds, every
   run ``--steps`` steps at the demo's learning rate of its mode, the last state tested): all methods
   with fine-tune and linear probe, scratch (the Supervised row) and a random-init linear probe
   (the first method's architecture) at 12 leads and ``--fractions``; the methods marked for the
   lead table also at 6 (limb) and 1 (I) leads;
3. writes ``<workdir>/grid/results.md`` (both layouts, the paper's numbers beside ours) and
   ``runs.csv``, prints them and the wall time of each phase.
A rerun with the same workdir resumes: finished pre-trainings and runs are reused. On a 2-core CPU
under the default (authors') recipe a fine-tune run takes about 20-60 s (CPC's LSTM the longest), a
linear probe through the frozen encoder 10-40 s, a ViT pre-training about 40 s: with every method
about an hour (docs/results.md; 31 minutes under ``config.recipe=stmem_jax``, whose probes train on
cached features). The numbers are a smoke test of the
pipeline, not the paper's (tiny models, synthetic data: the paper's column shows the layout and
the gaps).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# key (--methods): (the table's row name, pre-training config, overrides of its fields, in the lead table)
METHODS = {
    "st_mem": ("ST-MEM", "st_mem:tiny", {}, True),
    "st_mem_no_lead_indicators": ("ST-MEM w/o lead indicators", "st_mem:tiny", {"model.lead_indicators": "none"},
                                  False),
    "mtae": ("MTAE", "mtae:tiny", {}, False),
    "mtae_rlm": ("MTAE+RLM", "mtae_rlm:tiny", {}, True),
    "mlae": ("MLAE", "mlae:tiny", {}, True),
    "moco_v3": ("MoCo v3", "moco_v3:tiny", {}, False),
    "cmsc": ("CMSC", "cmsc:tiny", {}, False),
    # CPC's LSTM runs over every sample: a smaller batch keeps its steps short on a CPU
    "cpc_250hz": ("CPC (250 Hz)", "cpc:250hz", {"train.batch_size": 16}, False),
    "cpc_100hz": ("CPC (100 Hz)", "cpc:100hz", {"train.batch_size": 16, "data.sample_rate": 100,
                                                "data.crop_samples": 1000}, False),
}
RANDOM_ROW = "Random init"  # linear probe on the first method's architecture at random initialisation


def override(config, overrides: dict) -> None:
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="/tmp/stmem_paper_tables")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated keys of {', '.join(METHODS)}")
    p.add_argument("--records", type=int, default=1000, help="synthetic ECGs of the pre-training data")
    p.add_argument("--target-records", type=int, default=1000, help="synthetic ECGs of the downstream data")
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--steps", type=int, default=80, help="steps of every downstream run")
    p.add_argument("--fractions", default="0.01,0.05,1.0")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--no-lead-table", action="store_true", help="12-lead runs only")
    args = p.parse_args(argv)
    keys = [k for k in args.methods.split(",") if k]
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        p.error(f"unknown method(s) {', '.join(unknown) or '(none)'}: use {', '.join(METHODS)}")

    from stmem_jax.cli import synthetic_dataset, use_compilation_cache
    from stmem_jax.demo import LEARNING_RATES, SMALL
    from stmem_jax.grid import paper_tables, run_grid, write_results
    from stmem_jax.train import pretrain
    from stmem_jax.train.config import load_config

    use_compilation_cache()
    workdir = os.path.abspath(args.workdir)
    seconds, start = {}, time.time()

    def phase(name):
        seconds[name] = round(time.time() - start - sum(seconds.values()))
        print(f"== {name}: {seconds[name]} s", flush=True)

    source = synthetic_dataset(os.path.join(workdir, "pretrain_data"), args.records, seed=0)
    target = synthetic_dataset(os.path.join(workdir, "downstream_data"), args.target_records, seed=1)
    phase("data")

    inits = {}
    for key in keys:
        name, spec, overrides, _ = METHODS[key]
        config = load_config(spec)
        config.model.update({k: v for k, v in SMALL.items() if k in config.model})
        override(config, overrides)
        config.data.dir = source
        config.train.update(num_steps=args.pretrain_steps, warmup_steps=max(1, args.pretrain_steps // 10), lr=1.5e-3)
        config.eval.every_steps = 0
        config.log.update(every_steps=max(1, args.pretrain_steps // 5), figure_every_steps=0)
        config.checkpoint.update(every_steps=args.pretrain_steps, asynchronous=False)
        inits[key] = os.path.join(workdir, "pretrain", key)
        print(f"-- pre-training {name} ({spec}) in {inits[key]}", flush=True)
        pretrain.train(config, inits[key])  # a finished run returns at once
        phase(f"pre-training {name}")

    grid = load_config("grid:ptbxl:st_mem")
    grid.run.data.update(dir=target, val_split="")  # no model selection: the last state is tested
    grid.run.model.update({k: v for k, v in SMALL.items() if k in grid.run.model}, preset="tiny")
    grid.run.train.update(num_steps=args.steps, warmup_steps=max(1, args.steps // 10), min_steps=0)
    grid.run.log.every_steps = args.steps
    grid.run.checkpoint.asynchronous = False
    grid.grid.update(fractions=tuple(float(f) for f in args.fractions.split(",")),
                     seeds=tuple(range(args.seeds)), reference="paper")
    entries = [f"{METHODS[k][0]}={inits[k]}" for k in keys]
    lead_entries = [f"{METHODS[k][0]}={inits[k]}" for k in keys if METHODS[k][3]]
    grids = [  # (phase, modes, methods, lead settings)
        ("grid: 12 leads, fine-tune and scratch", ("finetune", "scratch"), entries, ("12",)),
        ("grid: 12 leads, linear probe", ("linprobe",), entries + [f"{RANDOM_ROW}=random:{inits[keys[0]]}"],
         ("12",)),
    ]
    if lead_entries and not args.no_lead_table:
        grids.append(("grid: 6 and 1 leads", ("finetune", "linprobe"), lead_entries, ("limb", "1")))
    grid_dir = os.path.join(workdir, "grid")
    rows = []
    for name, modes, methods, leads in grids:
        for mode in modes:  # each mode at its learning rate
            grid.run.train.lr = LEARNING_RATES[mode]
            grid.grid.update(modes=(mode,), methods=tuple(methods), leads=leads)
            rows += run_grid(grid, grid_dir)["rows"]
        phase(name)
    text = write_results(rows, grid.grid.seeds, grid_dir, paper_tables(rows, grid.grid.seeds, "paper"))
    print(f"\n{text}\nwrote {grid_dir}/results.md and runs.csv ({len(rows)} runs)")
    print("wall time per phase (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items())
          + f"; total {round(time.time() - start)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    sys.exit(main())
