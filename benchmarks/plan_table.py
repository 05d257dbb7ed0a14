"""README's TPU table: the largest per-device batch of ``vit_base`` pre-training and fine-tuning on each
TPU generation, with and without remat and FSDP, from ahead-of-time compilation on this host.

    python benchmarks/plan_table.py [--generations v5e,v4,v6e,v5p] [--steps pretrain,finetune] [--fsdp 1,4]
                                    [--batches 32,64] [--check] [--cache F] [--cached-only]

Each cell compiles the config's exact train step (``stmem_jax.plan.compile_step``; bfloat16, 4 chips,
mesh data x fsdp) at the two per-device ``--batches`` (a v4 device is one of its chip's 2
TensorCores, with half its HBM; the other generations' are whole chips). Per-device memory is close to affine in the
batch (parameters and optimizer state, plus activations per example), so the line through the two
totals estimates the largest batch under the device's HBM; ``--check`` compiles each cell at that
batch too and prints its total. Every compile (2.5-5 minutes of both cores here for ``vit_base``)
is appended to ``--cache`` (``benchmarks/plan_table.jsonl``, committed) and reused by a rerun, so
the table grows over several sittings; ``--cached-only`` prints the cells done so far. Needs the
[tpu] extra.
"""

import argparse
import itertools
import json
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}
CONFIGS = {"pretrain": "st_mem:vit_base", "finetune": "ptbxl:st_mem"}


def compile_total(generation: str, step: str, remat: bool, fsdp: int, batch: int, devices: dict) -> dict:
    """Per-device bytes, HBM bytes and compile seconds of one cell's step at ``batch`` per device."""
    from stmem_jax import plan
    from stmem_jax.train.config import load_config

    config = load_config(CONFIGS[step])
    config.model.update(preset="vit_base", dtype="bfloat16", remat=remat)
    config.mesh.fsdp = fsdp
    if generation not in devices:
        devices[generation] = plan.topology_devices(TOPOLOGIES[generation])
    result = plan.compile_step(config, devices[generation], batch)
    return {"total": result.total_bytes, "hbm": plan.hbm_bytes(devices[generation]), "seconds": result.compile_s}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", default="v5e,v4,v6e,v5p")
    parser.add_argument("--steps", default="pretrain,finetune")
    parser.add_argument("--fsdp", default="1,4", help="mesh.fsdp values (4 chips)")
    parser.add_argument("--batches", default="32,64", help="the two per-device batches of the fit")
    parser.add_argument("--check", action="store_true", help="also compile each cell at its largest batch")
    parser.add_argument("--cache", default=os.path.join(REPO, "benchmarks", "plan_table.jsonl"),
                        help="compiles done so far (reused; the README table's are committed)")
    parser.add_argument("--cached-only", action="store_true", help="compile nothing: only the cells in the cache")
    args = parser.parse_args()
    low, high = map(int, args.batches.split(","))
    cells = list(itertools.product(args.generations.split(","), args.steps.split(","), (False, True),
                                   [int(f) for f in args.fsdp.split(",")]))
    cache = {}
    if os.path.isfile(args.cache):
        with open(args.cache) as f:
            cache = {tuple(r["key"]): r for r in map(json.loads, f)}
    if args.cached_only and args.check:
        parser.error("--check compiles: it cannot go with --cached-only")
    if args.cached_only:
        cells = [c for c in cells if all((*c, b) in cache for b in (low, high))]
    devices, start, done = {}, time.time(), 0
    todo = 2 * len(cells) - sum((*c, b) in cache for c in cells for b in (low, high))
    todo += len(cells) if args.check else 0

    def compiled(cell, batch):
        nonlocal done, todo
        key = (*cell, batch)
        if key not in cache:
            cache[key] = {"key": key, **compile_total(*cell, batch, devices)}
            with open(args.cache, "a") as f:
                f.write(json.dumps(cache[key]) + "\n")
            done += 1
            rate = done / (time.time() - start)
            print(f"[{done}/{todo} compiles, ETA {max(todo - done, 0) / rate / 60:.0f} min] {cell} at {batch}: "
                  f"{cache[key]['total'] / 1e9:.2f} GB, compiled in {cache[key]['seconds']:.0f} s", flush=True)
        return cache[key]

    lines = ["| device (HBM) | step | remat | FSDP | GB fixed | MB per example | largest per-device batch |"
             + (" checked |" if args.check else ""), "|---|---|---|---|---|---|---|" + ("---|" if args.check else "")]
    for cell in cells:
        generation, step, remat, fsdp = cell
        a, b = compiled(cell, low), compiled(cell, high)
        per_example = (b["total"] - a["total"]) / (high - low)
        fixed = a["total"] - per_example * low
        largest = int((a["hbm"] - fixed) // per_example)
        line = (f"| {generation} ({a['hbm'] / 2 ** 30:.0f} GiB) | {step} | {'yes' if remat else 'no'} | {fsdp} | "
                f"{fixed / 1e9:.2f} | {per_example / 1e6:.0f} | {largest} |")
        if args.check:
            c = compiled(cell, largest)
            line += f" {c['total'] / 1e9:.2f} GB, {'fits' if c['total'] <= c['hbm'] else 'does NOT fit'} |"
        lines.append(line)
    print("\n".join(lines))
    print(f"{len(cells)} cells, {done} compiled now in {(time.time() - start) / 60:.1f} min; cache {args.cache}")


if __name__ == "__main__":
    main()
