"""``stmem-plan``: will a config's train step fit a TPU slice, and what will it cost? Compiled ahead
of time on this host (no TPU needed; ``pip install -e '.[tpu]'`` brings libtpu).

    stmem-plan --config st_mem:vit_base --topology v5e:4x4 [--batch_per_chip 128]
    stmem-plan --config ptbxl:st_mem --topology v5e:2x2 --max_batch 512 \\
        --config.model.preset=vit_base --config.model.remat=True

The exact step of the config (the trainer's own step function and optimizer; mesh data x fsdp from
``mesh.fsdp``; ``model.dtype``, ``model.remat``, ``train.grad_accum_steps``) is lowered with
abstract inputs sharded over the topology's devices and compiled by XLA for TPU. It prints per
device: arguments (parameters, optimizer state, batch), temporaries and their total against the
device's HBM; the compiled FLOPs per step against the analytic count; and with ``--max_batch`` the
largest per-device batch that fits (bisection). A fine-tuning step has the same shape from any
``init``, so none is loaded; ``--num_classes`` sets the head (linear probing trains only a head:
nothing to plan). Exit status 0, 1 when the step does not fit, 2 on a usage error.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from stmem_jax import mesh as meshlib
from stmem_jax.core.leads import lead_indices
from stmem_jax.core.views import batch_shape
from stmem_jax.train import loop, setup
from stmem_jax.train.checkpoints import abstract_with_shardings
from stmem_jax.train.config import resolve_recipe

# HBM per chip (GiB) by device kind; a v4 topology's devices are its TensorCores, 2 per chip
HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v6 lite": 32}
TPU_HINT = "ahead-of-time TPU compilation needs libtpu: pip install -e '.[tpu]'"


@dataclasses.dataclass
class Plan:
    """One compiled step: per-device bytes, FLOPs per step, compile time."""

    batch_per_chip: int
    global_batch: int
    argument_bytes: int
    temp_bytes: int
    output_bytes: int
    alias_bytes: int
    compiled_flops: float
    analytic_flops: float | None
    compile_s: float

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.temp_bytes + self.output_bytes - self.alias_bytes


def topology_devices(name: str) -> list:
    """The devices of a TPU topology such as ``v5e:2x2`` (``generation:shape``), for compilation only."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise RuntimeError(TPU_HINT) from None
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)
    except Exception as error:  # libtpu raises several kinds on an unknown name
        raise ValueError(f"unknown TPU topology {name!r} ({error}); e.g. v4:2x2x1, v5e:4x4, v5p:2x2x1, "
                         f"v6e:2x2") from None


def devices_per_chip(devices: list) -> int:
    """Devices that share a chip (its TensorCores, when the topology exposes each as a device)."""
    chips = {tuple(getattr(d, "coords", (d.id,))) for d in devices}
    return len(devices) // len(chips)


def hbm_bytes(devices: list) -> int | None:
    """HBM of one of ``devices``: its chip's (by kind, the longest matching name: "TPU v5 lite" before
    "TPU v5"), shared by the devices on that chip."""
    kind = getattr(devices[0], "device_kind", "")
    names = sorted((k for k in HBM_GIB if kind.startswith(k)), key=len)
    return HBM_GIB[names[-1]] * 2 ** 30 // devices_per_chip(devices) if names else None


def _step_and_inputs(config: ml_collections.ConfigDict, mesh: Mesh, global_batch: int, num_classes: int
                     ) -> tuple[Any, Any, list, float]:
    """(step function, abstract state with shardings, abstract batch arguments, analytic FLOPs per step)."""
    config = resolve_recipe(config)
    lead_ids = lead_indices(config.data.leads)
    schedule = loop.Schedule.of(config.train, global_batch, steps_per_epoch=1000)
    batch_sharding = meshlib.batch_sharding(mesh)
    series = jax.ShapeDtypeStruct((global_batch, len(lead_ids), config.data.crop_samples), jnp.float32,
                                  sharding=batch_sharding)
    if "mode" in config:  # a downstream config: its classifier's step has the same shape from any init
        if config.mode == "linprobe" and config.train.linprobe == "cached_features":
            raise ValueError("linear probing on cached features trains only a head: nothing to plan")
        run = setup.build(config, lead_ids, schedule, mesh.devices.flat,
                          classifier=setup.for_mode(setup.scratch_classifier(config, num_classes, lead_ids),
                                                    config.mode))
        batch = [series, jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=batch_sharding)]
    else:
        run = setup.build(config, lead_ids, schedule, mesh.devices.flat)
        batch = [jax.ShapeDtypeStruct(*batch_shape(view, global_batch, len(lead_ids), config.data),
                                      sharding=batch_sharding) for view in run.inputs]
    abstract = jax.eval_shape(run.init_state)
    return run.step, abstract_with_shardings(abstract, loop.state_shardings(mesh, abstract)), batch, \
        3 * run.forward_flops * global_batch


def compile_step(config: ml_collections.ConfigDict, devices: list, batch_per_chip: int, num_classes: int = 5) -> Plan:
    """Compiles the config's train step for ``devices`` at ``batch_per_chip`` examples per device."""
    fsdp = config.mesh.fsdp
    if len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} does not divide the {len(devices)} devices")
    mesh = Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), meshlib.BATCH_AXES)
    global_batch = batch_per_chip * len(devices)
    step, target, batch, analytic = _step_and_inputs(config, mesh, global_batch, num_classes)
    key = jax.ShapeDtypeStruct((), jax.eval_shape(lambda: jax.random.key(0)).dtype,
                               sharding=meshlib.replicated(mesh))
    start = time.perf_counter()
    compiled = loop.jit_step(step, target, [b.sharding for b in batch], mesh).lower(target, *batch, key).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return Plan(batch_per_chip, global_batch, memory.argument_size_in_bytes, memory.temp_size_in_bytes,
                memory.output_size_in_bytes, memory.alias_size_in_bytes,
                float(cost.get("flops", 0.0)) * len(devices), analytic, seconds)


def largest_batch(config, devices, limit: int, capacity: int, num_classes: int) -> tuple[int, Plan | None]:
    """The largest per-device batch in 1..``limit`` whose step fits in ``capacity`` bytes (bisection;
    memory grows with the batch), and its plan; (0, None) when not even 1 fits."""
    low, high, best = 0, limit, None
    while low < high:
        middle = (low + high + 1) // 2
        plan = compile_step(config, devices, middle, num_classes)
        verdict = "fits" if plan.total_bytes <= capacity else "too big"
        print(f"  per-device batch {middle}: {_gb(plan.total_bytes)} -> {verdict}", flush=True)
        if plan.total_bytes <= capacity:
            low, best = middle, plan
        else:
            high = middle - 1
    return low, best


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def describe(plan: Plan, capacity: int | None) -> list[str]:
    fits = "" if capacity is None else (" -> fits" if plan.total_bytes <= capacity else " -> does NOT fit")
    lines = [f"per-device batch {plan.batch_per_chip} (global {plan.global_batch}), per device: arguments "
             f"{_gb(plan.argument_bytes)}, temporaries {_gb(plan.temp_bytes)}, outputs {_gb(plan.output_bytes)} "
             f"(aliased {_gb(plan.alias_bytes)}); total {_gb(plan.total_bytes)}"
             + ("" if capacity is None else f" of {_gb(capacity)} HBM") + fits]
    flops_line = f"FLOPs per step: compiled {plan.compiled_flops:.3e}"
    if plan.analytic_flops:
        flops_line += f", analytic {plan.analytic_flops:.3e} (ratio {plan.compiled_flops / plan.analytic_flops:.2f})"
    lines += [flops_line, f"compiled in {plan.compile_s:.1f} s"]
    return lines


def plan(config: ml_collections.ConfigDict, topology: str, batch_per_chip: int | None = None,
         max_batch: int | None = None, num_classes: int = 5) -> int:
    """Prints the plan of ``config`` on ``topology``; returns the exit status (1: does not fit)."""
    devices = topology_devices(topology)
    capacity = hbm_bytes(devices)
    shared = devices_per_chip(devices)
    per_chip = batch_per_chip or max(1, math.ceil(config.train.batch_size / len(devices)))
    m = config.model
    print(f"{topology}: {len(devices)} x {devices[0].device_kind}{f' ({shared} per chip)' if shared > 1 else ''}"
          f"{'' if capacity is None else f' ({capacity / 2 ** 30:.0f} GiB HBM each)'}; mesh data "
          f"{len(devices) // config.mesh.fsdp} x fsdp {config.mesh.fsdp}; {config.get('method') or m.kind} {m.preset} "
          f"{m.dtype}, remat "
          f"{m.remat}, grad_accum_steps {config.train.get('grad_accum_steps', 1)} (0: automatic, one batch on TPU)",
          flush=True)
    result = compile_step(config, devices, per_chip, num_classes)
    for line in describe(result, capacity):
        print(line, flush=True)
    if max_batch and capacity:
        best, _ = largest_batch(config, devices, max_batch, capacity, num_classes)
        print(f"largest per-device batch that fits: {best}" + (" (the --max_batch limit)" if best == max_batch else ""),
              flush=True)
    return 0 if capacity is None or result.total_bytes <= capacity else 1


def main(argv: list[str] | None = None) -> None:
    from stmem_jax.cli import answer_help, check_config, help_requested, parse_flags

    options = {"--topology": "TPU topology, e.g. v5e:4x4, v4:2x2x2, v5p:4x4x4, v6e:8x8",
               "--batch_per_chip": "examples per device (default: train.batch_size over the devices)",
               "--max_batch": "also find the largest per-device batch up to this that fits",
               "--num_classes": "fine-tuning: classes of the head (default 5)"}
    args = sys.argv if argv is None else argv
    if help_requested(args):
        answer_help("stmem-plan", args, "st_mem:vit_base", options)
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "a shipped config's name or a config file, and its argument, "
                                    "e.g. st_mem:vit_base", lock_config=True)
    flags.DEFINE_string("topology", None, options["--topology"])
    flags.DEFINE_integer("batch_per_chip", None, options["--batch_per_chip"])
    flags.DEFINE_integer("max_batch", None, options["--max_batch"])
    flags.DEFINE_integer("num_classes", 5, options["--num_classes"])
    flags.mark_flags_as_required(["config", "topology"])

    def run(_):
        f = flags.FLAGS
        if not f["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        code = check_config("stmem-plan", f.config, verbose=f["verbosity"].present)
        if code:
            sys.exit(code)
        try:
            sys.exit(plan(f.config, f.topology, f.batch_per_chip, f.max_batch, f.num_classes))
        except (ValueError, RuntimeError) as error:
            print(f"stmem-plan: error: {error}", file=sys.stderr)
            sys.exit(2)

    app.run(run, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    main()
