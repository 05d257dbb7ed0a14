"""Orbax checkpoints of a training state: the last N for resuming, and the best by a metric.

Every save also records a checksum of each array (``checksums.json`` beside the steps): a sum of
its bits weighted by position, modulo 2^32, computed on the devices and exact whatever the
sharding, so any flipped bit or byte changes it. A restore checks it; :meth:`Checkpoints.restore_latest`
falls back from a damaged step (unreadable, arrays that differ from their checksum, or no checksum
recorded for it) to the newest intact one, moving the damaged one aside (``broken-<step>``, or
``broken-<step>-<n>`` beside an earlier one) with a warning. An unreadable ``checksums.json``
verifies nothing: that is an error, and nothing is moved. Without any ``checksums.json``
(checkpoints written before checksums existed) a step is restored unverified, with a warning. A
step whose arrays have other shapes than this run's (another model or optimizer setting) is not
damaged: that is :class:`StateMismatch`, and nothing is touched.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from stmem_jax.core import fileio

CHECKSUMS = "checksums.json"


class DamagedCheckpoint(RuntimeError):
    """A checkpoint step cannot be restored or its arrays differ from their checksums."""


class StateMismatch(ValueError):
    """The checkpoints hold a state of other shapes than this run's: they belong to another run."""


def _path_key(path) -> str:
    return "/".join(str(next(getattr(k, a) for a in ("key", "name", "idx") if hasattr(k, a))) for k in path)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """``{path: shape}`` of every array of a state or of a checkpoint's metadata."""
    return {_path_key(path): tuple(leaf.shape) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


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
        self.workdir = workdir = fileio.absolute(workdir)
        fileio.makedirs(workdir)  # a missing bucket is an error here, never created by orbax
        self.manager = ocp.CheckpointManager(
            fileio.join(workdir, "checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=asynchronous),
            item_handlers=ocp.StandardCheckpointHandler())  # known before a save: metadata of existing steps
        self.best_metric = best_metric
        self.best = None
        if best_metric:
            self.best = ocp.CheckpointManager(
                fileio.join(workdir, "best"),
                options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
                                                     best_mode="min", enable_async_checkpointing=asynchronous),
                item_handlers=ocp.StandardCheckpointHandler())

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
        DamagedCheckpoint when it cannot be read or its arrays differ from (or have no) checksums."""
        manager = self.best if best else self.manager
        expected = _read_checksums(manager)
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as error:  # orbax raises many kinds on damaged files
            raise DamagedCheckpoint(f"step {step} in {manager.directory} cannot be read "
                                    f"({type(error).__name__}: {str(error)[:300]})") from error
        if expected is None:
            print(f"warning: {manager.directory} has no {CHECKSUMS}: step {step} restored without verification "
                  f"(a checkpoint written before checksums existed)", flush=True)
            return state
        if str(step) not in expected:
            raise DamagedCheckpoint(f"step {step} in {manager.directory} has no checksum in {CHECKSUMS}")
        differ = [path for path, value in checksums(state).items() if expected[str(step)].get(path) != value]
        if differ:
            raise DamagedCheckpoint(f"step {step} in {manager.directory}: {len(differ)} array(s) differ from "
                                    f"their checksums ({', '.join(differ[:3])})")
        return state

    def check_shapes(self, step: int, target: Any) -> None:
        """Raises StateMismatch when ``step``'s arrays (from its metadata; nothing is read) have other
        paths or shapes than ``target``; a step whose metadata cannot be read is left to :meth:`restore`."""
        try:
            saved = _shapes(self.manager.item_metadata(step).tree)
        except Exception:  # damaged metadata: restore() tells
            return
        wanted = _shapes(target)
        if saved != wanted:
            differ = [f"{path}: {saved.get(path, 'absent')} saved, {wanted.get(path, 'absent')} now"
                      for path in sorted(set(saved) | set(wanted)) if saved.get(path) != wanted.get(path)]
            raise StateMismatch(f"{self.workdir} holds checkpoints of another run: {len(differ)} array(s) differ "
                                f"from this run's ({'; '.join(differ[:3])})")

    def restore_latest(self, target: Any) -> tuple[Any, int | None]:
        """The newest intact checkpoint restored onto ``target`` and its step, or (None, None) when
        there is none; damaged newer steps are moved aside with a warning naming them. StateMismatch
        (nothing touched) when the newest step is of another run; ValueError when ``checksums.json``
        cannot be read."""
        for step in sorted(self.manager.all_steps(), reverse=True):
            self.check_shapes(step, target)
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


def _read_checksums(manager: ocp.CheckpointManager) -> dict[str, dict[str, int]] | None:
    """The recorded checksums by step; None without a checksums file. A checksums file that cannot
    be read is a ValueError (restoring unverified would let damage through; moving every step aside
    would drop the run)."""
    path = fileio.join(str(manager.directory), CHECKSUMS)
    if not fileio.exists(path):
        return None
    try:
        table = json.loads(fileio.read_text(path))
        if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
            raise ValueError("not a table of checksums by step")
    except (OSError, ValueError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"{path} cannot be read ({error}), so no checkpoint in {manager.directory} can be "
                         f"verified; restore the file, or delete it to resume without verification") from None
    return table


def _record_checksums(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Adds ``step``'s checksums (and forgets those of steps no longer kept), atomically."""
    values = checksums(state)
    if jax.process_index() != 0:
        return
    kept = {str(s) for s in manager.all_steps()}
    table = {k: v for k, v in (_read_checksums(manager) or {}).items() if k in kept} | {str(step): values}
    path = fileio.join(str(manager.directory), CHECKSUMS)
    fileio.makedirs(fileio.dirname(path))
    fileio.write_text(path, json.dumps(table))


def _move_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Renames a damaged step's directory to ``broken-<step>``, or ``broken-<step>-<n>`` when an
    earlier one holds that name (nothing is deleted)."""
    source = fileio.join(str(manager.directory), str(step))
    target = fileio.join(str(manager.directory), f"broken-{step}")
    for n in itertools.count(1):
        if not fileio.exists(target):
            break
        target = fileio.join(str(manager.directory), f"broken-{step}-{n}")
    if jax.process_index() == 0 and fileio.isdir(source):  # in a bucket: a copy, then the deletion
        fileio.rename(source, target)
    multihost_utils.sync_global_devices(f"checkpoint {step} moved aside")
    manager.reload()
    return target


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s of ``tree`` carrying ``shardings`` (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
