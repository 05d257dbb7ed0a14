"""Orbax checkpoints of a training state: the last N for resuming, and the best by a metric."""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def save_best(self, step: int, state: Any, metrics: dict[str, float]) -> None:
        """Keeps ``state`` if its metric is the best so far. A step already kept was saved before an
        interruption; the resumed run replays the same state there, so it is left as it is."""
        if self.best is not None and step not in self.best.all_steps():
            self.best.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)

    def restore(self, step: int, target: Any, best: bool = False) -> Any:
        """Restores ``step`` onto ``target``'s shapes and shardings (any device count)."""
        manager = self.best if best else self.manager
        return manager.restore(step, args=ocp.args.StandardRestore(target))

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


def abstract_with_shardings(tree: Any, shardings: Any) -> Any:
    """``jax.ShapeDtypeStruct``s of ``tree`` carrying ``shardings`` (restore targets)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
