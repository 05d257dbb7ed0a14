"""Orbax checkpoints of a training state: the last N for resuming, and the best by a metric.

Every save also records a checksum of each array (``checksums.json`` beside the steps): a sum of
its bits weighted by position, modulo 2^32, computed on the devices and exact whatever the
sharding, so any flipped bit or byte changes it. A restore checks it; :meth:`Checkpoints.restore_latest`
falls back from a damaged step (unreadable, or arrays that differ from their checksum) to the
newest intact one, moving the damaged one aside (``broken-<step>``) with a warning.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKSUMS = "checksums.json"


class DamagedCheckpoint(RuntimeError):
    """A checkpoint step cannot be restored or its arrays differ from their checksums."""


def _bits(x: jax.Array) -> jax.Array:
    """The array's bit patterns as uint32 (16-bit types widened, 8-bit and bool cast)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype.itemsize == 4:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    if x.dtype.itemsize == 2:
        return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    return x.astype(jnp.uint32)


@jax.jit
def _sums(leaves: list[jax.Array]) -> jax.Array:
    def one(x):
        bits = _bits(x)
        index = jnp.zeros(bits.shape, jnp.uint32)
        for axis, size in enumerate(bits.shape):  # the flat (C-order) position, without a reshape
            index = index * jnp.uint32(size) + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis)
        return jnp.sum(bits * (2 * index + 1), dtype=jnp.uint32)
    return jnp.stack([one(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.uint32)


def checksums(tree: Any) -> dict[str, int]:
    """``{leaf path: checksum}`` of every array in ``tree``."""
    paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(tree)[0]) or ((), ())
    sums = _sums(list(leaves))  # replicated: every process holds the whole (small) result
    values = np.asarray(sums.addressable_shards[0].data) if len(leaves) else np.zeros(0, np.uint32)
    return {jax.tree_util.keystr(p): int(v) for p, v in zip(paths, values)}


class Checkpoints:
    """``<workdir>/checkpoints`` keeps the last ``keep`` states (asynchronous writes);
    ``<workdir>/best`` keeps the one with the lowest ``best_metric`` when one is given."""

    def __init__(self, workdir: str, keep: int = 3, *, asynchronous: bool = True, best_metric: str | None = None):
        self.workdir = workdir = os.path.abspath(workdir)
        self.manager = ocp.CheckpointManager(
            os.path.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=asynchronous))
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                os.path.join(workdir, "best"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                                                     best_mode="min", enable_async_checkpointing=asynchronous))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any) -> None:
        _record_checksums(self.manager, step, state)
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        """Keeps ``state`` if its metric is the best so far. A step already kept was saved before an
        interruption; the resumed run replays the same state there, so it is left as it is."""
        if self.best is not None and step not in self.best.all_steps():
            _record_checksums(self.best, step, state)
            self.best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def restore(self, step: int, target: Any, best: bool = False) -> Any:
        """Restores ``step`` onto ``target``'s shapes and shardings (any device count); raises
        DamagedCheckpoint when it cannot be read or its arrays differ from their checksums."""
        manager = self.best if best else self.manager
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as error:  # orbax raises many kinds on damaged files
            raise DamagedCheckpoint(f"step {step} in {manager.directory} cannot be read "
                                    f"({type(error).__name__}: {str(error)[:300]})") from error
        expected = _read_checksums(manager).get(str(step))
        if expected is not None:
            differ = [path for path, value in checksums(state).items() if expected.get(path) != value]
            if differ:
                raise DamagedCheckpoint(f"step {step} in {manager.directory}: {len(differ)} array(s) differ from "
                                        f"their checksums ({', '.join(differ[:3])})")
        return state

    def restore_latest(self, target: Any) -> tuple[Any, int | None]:
        """The newest intact checkpoint restored onto ``target`` and its step, or (None, None) when
        there is none; damaged newer steps are moved aside with a warning naming them."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                return self.restore(step, target), step
            except DamagedCheckpoint as error:
                moved = _move_aside(self.manager, step)
                print(f"warning: checkpoint {error}; moved to {moved}, trying the previous one", flush=True)
        return None, None

    def best_step(self) -> int | None:
        return self.best.best_step() if self.best is not None else None

    def wait(self) -> None:
        self.manager.wait_until_finished()
        if self.best is not None:
            self.best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()
        if self.best is not None:
            self.best.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_checksums(manager: ocp.CheckpointManager) -> dict[str, dict[str, int]]:
    path = os.path.join(str(manager.directory), CHECKSUMS)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _record_checksums(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Adds ``step``'s checksums (and forgets those of steps no longer kept), atomically."""
    values = checksums(state)
    if jax.process_index() != 0:
        return
    kept = {str(s) for s in manager.all_steps()}
    table = {k: v for k, v in _read_checksums(manager).items() if k in kept} | {str(step): values}
    path = os.path.join(str(manager.directory), CHECKSUMS)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp-{os.getpid()}", "w") as f:
        json.dump(table, f)
    os.replace(f"{path}.tmp-{os.getpid()}", path)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Renames a damaged step's directory to ``broken-<step>`` (nothing is deleted)."""
    source = os.path.join(str(manager.directory), str(step))
    target = os.path.join(str(manager.directory), f"broken-{step}")
    if jax.process_index() == 0 and os.path.isdir(source):
        os.replace(source, target) if not os.path.exists(target) else None
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    manager.reload()
    return target


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s of ``tree`` carrying ``shardings`` (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
