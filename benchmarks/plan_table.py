"""The largest per-chip batch of ``vit_base`` pre-training and fine-tuning on TPU v4, v5e, v5p and
v6e, with and without remat and FSDP: the README's table, compiled ahead of time on this host.

    python benchmarks/plan_table.py [--topology v5e:2x2] [--batches 32,64] [--verify]

A step's per-chip memory is affine in its per-chip batch (parameters and optimizer state, plus
activations per example), so each configuration is compiled (``stmem_jax.plan.compile_step``, the
trainers' own steps) at two batches on one topology. The largest batch is then where that line
meets each generation's HBM (``stmem_jax.plan.HBM_GIB``), rounded down to a multiple of 8.
``--verify`` compiles each configuration once more at the predicted largest batch of the
topology's own generation and prints its measured total. With FSDP the parameters and optimizer
state are split over all the topology's chips (``mesh.fsdp`` = chips). About 45 s per compile on
2 CPU cores: the whole table (8 configurations x 2 compiles) takes about 15 minutes. Needs libtpu
(``pip install -e '.[tpu]'``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from stmem_jax import plan  # noqa: E402
from stmem_jax.train.config import load_config  # noqa: E402

STEPS = {"pre-training": ("configs/pretrain/st_mem.py", "vit_base"),
         "fine-tuning": ("configs/downstream/ptbxl.py", "st_mem")}
GENERATIONS = {"v4": "TPU v4", "v5e": "TPU v5 lite", "v5p": "TPU v5", "v6e": "TPU v6 lite"}


def config_for(step: str, remat: bool, fsdp: int):
    path, arg = STEPS[step]
    config = load_config(os.path.join(ROOT, path), arg)
    config.model.update(preset="vit_base", remat=remat, dtype="bfloat16")
    config.mesh.fsdp = fsdp
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topology", default="v5e:2x2", help="the topology compiled for")
    parser.add_argument("--batches", default="32,64", help="the two per-chip batches the line is fitted through")
    parser.add_argument("--verify", action="store_true", help="compile once more at the predicted largest batch")
    args = parser.parse_args(argv)
    low, high = (int(b) for b in args.batches.split(","))
    devices = plan.topology_devices(args.topology)
    own = plan.hbm_bytes(devices[0])
    print(f"{args.topology}: {len(devices)} x {devices[0].device_kind}; bfloat16, AdamW, 12 leads; "
          f"per-chip memory fitted through batches {low} and {high}", flush=True)
    rows = []
    start = time.time()
    for step in STEPS:
        for fsdp in (1, len(devices)):
            for remat in (False, True):
                config = config_for(step, remat, fsdp)
                a, b = (plan.compile_step(config, devices, n) for n in (low, high))
                per_example = (b.total_bytes - a.total_bytes) / (high - low)
                fixed = a.total_bytes - per_example * low
                largest = {g: max(0, int((plan.HBM_GIB[kind] * 2 ** 30 - fixed) // per_example) // 8 * 8)
                           for g, kind in GENERATIONS.items()}
                row = {"step": step, "remat": remat, "fsdp": fsdp, "fixed": fixed, "per_example": per_example,
                       **largest}
                if args.verify and own:
                    mine = max(8, int((own - fixed) // per_example) // 8 * 8)
                    row["verified"] = (mine, plan.compile_step(config, devices, mine).total_bytes)
                rows.append(row)
                print(f"  {step}, remat {remat}, fsdp {fsdp}: {fixed / 1e9:.2f} GB + {per_example / 1e6:.1f} MB "
                      f"per example; largest {largest}" + (f"; compiled at {row['verified'][0]}: "
                                                          f"{row['verified'][1] / 1e9:.2f} GB"
                                                          if "verified" in row else "")
                      + f"  [{time.time() - start:.0f} s]", flush=True)
    print(f"\n| step | remat | FSDP | fixed GB/chip | MB per example | " + " | ".join(GENERATIONS) + " |")
    print("|---|---|---|---|---|" + "---|" * len(GENERATIONS))
    for r in rows:
        print(f"| {r['step']} | {'yes' if r['remat'] else 'no'} | "
              f"{'over ' + str(r['fsdp']) + ' chips' if r['fsdp'] > 1 else 'no'} | {r['fixed'] / 1e9:.2f} | "
              f"{r['per_example'] / 1e6:.1f} | " + " | ".join(str(r[g]) for g in GENERATIONS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
