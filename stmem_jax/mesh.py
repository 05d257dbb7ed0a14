"""Device mesh, shardings and multi-host start-up.

The mesh has two axes: ``data`` and ``fsdp``. Batches are split over both (every device sees
its own examples); parameters and optimizer state are replicated, or with ``fsdp`` > 1 split
along their largest divisible dimension over the ``fsdp`` axis (FSDP / ZeRO-3 style).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(coordinator_address: str = "", num_processes: int = 1, process_id: int = 0,
                           auto: bool = False) -> None:
    """Starts ``jax.distributed`` for multi-host runs: explicitly, or auto-detected (TPU pods,
    SLURM) with ``auto``. A single-process run needs nothing; a second call does nothing."""
    if jax.distributed.is_initialized():
        return
    if num_processes > 1:
        # CPU devices of several processes talk through gloo; GPUs and TPUs ignore this setting
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()


def make_mesh(fsdp: int = 1) -> Mesh:
    """All devices of all processes as a (devices / fsdp, fsdp) mesh."""
    devices = jax.devices()
    if len(devices) % fsdp:
        raise ValueError(f"fsdp={fsdp} does not divide the {len(devices)} devices")
    return Mesh(np.asarray(devices).reshape(len(devices) // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(mesh: Mesh, abstract_tree: Any) -> Any:
    """Shardings for parameters / optimizer state: replicated, or FSDP-split when the mesh's
    ``fsdp`` axis is larger than 1 (the largest dimension divisible by it; scalars replicated)."""
    size = mesh.shape["fsdp"]

    def one(leaf):
        shape = getattr(leaf, "shape", ())
        if size == 1 or not shape:
            return replicated(mesh)
        candidates = [d for d in np.argsort(shape)[::-1] if shape[d] % size == 0 and shape[d] >= size]
        if not candidates:
            return replicated(mesh)
        spec = [None] * len(shape)
        spec[candidates[0]] = "fsdp"
        return NamedSharding(mesh, P(*spec))

    return jax.tree.map(one, abstract_tree)


def initialize_from_config(config) -> None:
    """:func:`initialize_distributed` with a config's ``distributed`` section."""
    d = config.distributed
    initialize_distributed(d.coordinator_address, d.num_processes, d.process_id, d.auto)
