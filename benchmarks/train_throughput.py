"""Training step throughput: examples/s, step time and MFU per preset and compute dtype.

    python benchmarks/train_throughput.py [--method st_mem] [--step pretrain|finetune]
                                          [--presets tiny,vit_small,vit_base] [--dtypes float32,bfloat16]
                                          [--batch 16] [--steps 5] [--remat] [--accum 0] [--peak-tflops X]

Times the jitted train step that the trainers build (``stmem_jax.train.setup``) from the
method's config: its pre-training (``--step pretrain``; ST-MEM: masking, encoder on the kept
patches, lead-wise decoder) or fine-tuning its encoder (``--step finetune``: the 12-lead
classifier on every patch, drop-path 0.1, 5 classes), AdamW, donated state, on random input
already on the device, after two warm-up steps; in as many micro-batches as training uses
(``micro``: ``train.grad_accum_steps``, automatic by default). MFU = analytic model FLOPs (3 x
forward, the model's ``forward_flops``) / measured time / the device's peak; "of matmul" relates
the same rate to a large square matmul timed on the same device, the practical ceiling. Peak RSS
is this process's so far (``resource.getrusage``): give one preset and dtype for a step's own.
Runs unchanged on CPU, GPU and TPU, and imports nothing of TensorFlow (a GPU host may lack it).
"""

import argparse
import resource
import time

import jax
import jax.numpy as jnp

from stmem_jax import mesh as meshlib
from stmem_jax import methods
from stmem_jax.core.views import batch_shape
from stmem_jax.flops import peak_flops
from stmem_jax.train import setup
from stmem_jax.train.config import config_names, downstream, load_config, pretraining, resolve_recipe
from stmem_jax.train.loop import Schedule


def matmul_rate(dtype: str, n: int = 4096, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` (n x n) @ (n x n) products on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    product = jax.jit(lambda x: x @ x)
    jax.block_until_ready(product(a))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(product(a))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def step_config(kind: str, method: str, preset: str, dtype: str, batch: int, remat: bool, accum: int):
    """The config of the measured step: the method's pre-training (its shipped config at ``preset``
    when it has one: ``cpc:100hz``), or fine-tuning its encoder (12 leads, drop-path 0.1)."""
    if kind == "pretrain":
        config = load_config(method, preset) if method in config_names() else pretraining(preset, method)
    else:
        config = downstream()
    if kind == "finetune":
        config.model.update(kind=method, preset=preset, drop_path=0.1)
    config.model.update(dtype=dtype, remat=remat)
    config.train.update(batch_size=batch, grad_accum_steps=accum, num_steps=1000, warmup_steps=10)
    return resolve_recipe(config)


def measure(preset: str, dtype: str, batch: int, steps: int, remat: bool = False, accum: int = 0,
            kind: str = "pretrain", method: str = "st_mem"):
    """(seconds per step, model FLOPs per step, micro-batches) of one step kind, built as the trainers
    build it (``stmem_jax.train.setup``)."""
    mesh = meshlib.make_mesh()
    config = step_config(kind, method, preset, dtype, batch, remat, accum)
    leads = tuple(range(12))
    schedule = Schedule.of(config.train, batch, steps_per_epoch=1000)
    classifier = setup.scratch_classifier(config, 5, leads) if kind == "finetune" else None
    run = setup.build(config, leads, schedule, mesh.devices.flat, classifier=classifier)
    series = jax.device_put(jax.random.normal(jax.random.key(2), (batch, 12, config.data.crop_samples)),
                            meshlib.batch_sharding(mesh))
    inputs = {"series": series, "label": jax.device_put(jnp.arange(batch) % 5, meshlib.batch_sharding(mesh))}
    state = jax.device_put(jax.jit(run.init_state)(), meshlib.replicated(mesh))
    step = jax.jit(run.step, donate_argnums=0)
    for view in run.inputs:
        if view not in inputs:
            shape, dtype = batch_shape(view, batch, len(leads), config.data)
            inputs[view] = jax.device_put(jax.random.normal(jax.random.key(3), shape) if dtype == "float32" else
                                          jnp.arange(batch, dtype=dtype) // 2, meshlib.batch_sharding(mesh))
    batch_args = [inputs[name] for name in run.inputs]
    for _ in range(2):
        state, metrics = step(state, *batch_args, run.key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, *batch_args, run.key)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / steps
    return seconds, 3 * run.forward_flops * batch, run.accum_steps


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--step", default="pretrain", choices=("pretrain", "finetune"))
    parser.add_argument("--method", default="st_mem", help=f"a pre-training method ({', '.join(methods.names())}): "
                        f"its pre-training step, or fine-tuning its encoder")
    parser.add_argument("--presets", default="tiny,vit_small,vit_base")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=16, help="global batch")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--remat", action="store_true", help="recompute block activations (model.remat)")
    parser.add_argument("--accum", type=int, default=0,
                        help="micro-batches per step (train.grad_accum_steps; 0: automatic, as training chooses)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="override the device peak (per device)")
    args = parser.parse_args()
    devices = jax.devices()
    print(f"devices: {len(devices)} x {devices[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    dtypes = args.dtypes.split(",")
    rates = {dtype: matmul_rate(dtype) for dtype in dtypes}
    print("4096^3 matmul, per device: " + ", ".join(f"{d} {r / 1e12:.3f} TFLOP/s" for d, r in rates.items()))
    print(f"{args.method} {args.step} step")
    print(f"{'preset':<10} {'dtype':<9} {'batch':>5} {'micro':>5} {'step ms':>9} {'examples/s':>11} {'TFLOP/s':>8} "
          f"{'MFU':>7} {'of matmul':>9} {'peak RSS GB':>11}")
    for preset in args.presets.split(","):
        for dtype in dtypes:
            seconds, flops, accum = measure(preset, dtype, args.batch, args.steps, args.remat, args.accum, args.step,
                                            args.method)
            peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(devices[0], dtype)
            achieved = flops / seconds / len(devices)
            mfu = f"{100 * achieved / peak:.1f}%" if peak else "n/a"
            print(f"{preset:<10} {dtype:<9} {args.batch:>5} {accum:>5} {1000 * seconds:>9.1f} "
                  f"{args.batch / seconds:>11.2f} {achieved * len(devices) / 1e12:>8.3f} {mfu:>7} "
                  f"{100 * achieved / rates[dtype]:>8.1f}% {peak_rss_gb():>11.2f}", flush=True)


if __name__ == "__main__":
    main()
