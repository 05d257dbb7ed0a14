"""The training loop every trainer runs on.

A trainer brings a loss (in its step function), an evaluator (a :class:`Hook`) and its config
fields; this module gives it the rest: the train state and its guarded update, the schedule,
init-or-restore over a mesh with orbax checkpoints, and :func:`run`, which logs each interval,
calls the hooks at theirs, saves checkpoints, and on SIGTERM or Ctrl-C saves one and raises
:class:`Interrupted`. A rerun in the same workdir resumes from the latest checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from stmem_jax import mesh as meshlib
from stmem_jax.train.checkpoints import Checkpoints, DamagedCheckpoint, StateMismatch, abstract_with_shardings
from stmem_jax.train import config as config_lib
from stmem_jax.train.optim import peak_learning_rate, schedule as lr_schedule
from stmem_jax.train.reporting import Reporter, scalars


class NonFiniteLoss(RuntimeError):
    """A step produced a non-finite loss or gradient; the message names the step."""


class Interrupted(RuntimeError):
    """The run stopped on a signal after saving a checkpoint; a rerun resumes from it."""

    def __init__(self, signum: int, step: int, workdir: str):
        super().__init__(f"stopped by signal {signum} at step {step}; a checkpoint is in {workdir}: "
                         f"run the same command again to resume")
        self.signum = signum


@flax.struct.dataclass
class TrainState:
    """A run's state: the step, the parameters and their optimizer state, the first non-finite
    step, and a method's ``extra`` state (e.g. a momentum encoder; None for most methods)."""

    step: jax.Array
    params: Any
    opt_state: Any
    bad_step: jax.Array  # first step whose loss or gradient was not finite, -1 if none
    extra: Any = None

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, extra: Any = None) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                   bad_step=jnp.full((), -1, jnp.int32), extra=extra)


def state_shardings(mesh, abstract: TrainState) -> TrainState:
    """Shardings of a state on ``mesh``: counters replicated; parameters, optimizer and extra state
    replicated or FSDP-split (``mesh.state_shardings``)."""
    return TrainState(step=meshlib.replicated(mesh), params=meshlib.state_shardings(mesh, abstract.params),
                      opt_state=meshlib.state_shardings(mesh, abstract.opt_state), bad_step=meshlib.replicated(mesh),
                      extra=meshlib.state_shardings(mesh, abstract.extra))


def guarded_update(state: TrainState, tx: optax.GradientTransformation, loss: jax.Array, grads: Any,
                   update_extra: Callable[[Any], Any] | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """The optimizer step, and ``update_extra(new params)`` as the new extra state. A non-finite
    loss or gradient leaves parameters, optimizer and extra state unchanged and is recorded in
    ``bad_step`` (checked on the host by :func:`raise_if_bad`)."""
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    extra = state.extra if update_extra is None else update_extra(params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
    return (state.replace(step=state.step + 1, params=keep(params, state.params),
                          opt_state=keep(opt_state, state.opt_state), bad_step=bad_step,
                          extra=keep(extra, state.extra)),
            {"loss": loss, "grad_norm": grad_norm})


def raise_if_bad(state: TrainState) -> None:
    """Raises NonFiniteLoss naming the first step whose loss or gradient was not finite."""
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise NonFiniteLoss(f"non-finite loss or gradient at step {bad + 1}; the run stops and keeps the last "
                            f"checkpoint written before it")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Steps and learning rate of a run, from the ``train`` config section."""

    total_steps: int
    steps_per_epoch: int
    global_batch: int
    learning_rate: optax.Schedule
    description: str = ""

    @classmethod
    def of(cls, train: ml_collections.ConfigDict, global_batch: int, steps_per_epoch: int) -> Schedule:
        """``num_steps``, or ``epochs`` but at least ``min_steps`` (downstream: a training set of a few
        examples gets the updates a larger one does); warm-up in steps or epochs; peak ``lr``, or ``base_lr`` x
        ``train.batch_size`` / 256, then half-cycle cosine to ``min_lr``. The rate follows the
        configured batch, not ``global_batch``: a run with fewer training examples than a batch (1% of
        the labels) trains on all of them in each step, at the recipe's rate, not at a rate shrunk
        with its batch."""
        total = train.num_steps or max(train.epochs * steps_per_epoch, train.get("min_steps", 0))
        if total < 1:
            raise ValueError(f"the run has no step to train: train.num_steps is 0 and train.epochs ({train.epochs}) "
                             f"x {steps_per_epoch} step(s) per epoch is 0 (fewer examples than a batch?)")
        warmup = train.warmup_steps if train.warmup_steps >= 0 else train.warmup_epochs * steps_per_epoch
        peak = peak_learning_rate(train.lr, train.base_lr, train.batch_size)
        why = "train.lr" if train.lr else f"base_lr {train.base_lr:g} x train.batch_size {train.batch_size} / 256"
        if global_batch < train.batch_size:
            why += (f"; the batch is {global_batch} (every training example), and the rate follows the configured "
                    f"batch, not this one")
        description = (f"learning rate: peak {peak:.3g} ({why}), {min(warmup, total - 1)} warm-up step(s), "
                       f"half-cycle cosine to {train.min_lr:g} at step {total}")
        if not train.num_steps and total > train.epochs * steps_per_epoch:
            description += (f" (train.min_steps: {train.epochs} epochs of {steps_per_epoch} step(s) are fewer; the "
                            f"few training examples are repeated)")
        return cls(total, steps_per_epoch, global_batch, lr_schedule(peak, total, warmup, train.min_lr), description)


def init_or_restore(init_state: Callable[..., TrainState], mesh, checkpoints: Checkpoints, *args,
                    config: ml_collections.ConfigDict | None = None) -> tuple[TrainState, int, Any]:
    """The state of ``init_state(*args)`` on ``mesh`` (parameters and optimizer state replicated or
    FSDP-split), or the latest checkpoint restored onto the same shardings. ``args`` (e.g.
    pre-trained weights) may sit on any device. Checkpoints of another run are a StateMismatch,
    nothing touched: ``config`` differs from the run's saved config in a field of its identity
    (``config.identity``, the run's length excepted: it may grow), or the state has other shapes.
    Returns (state, its step, the restore target)."""
    args = jax.device_get(args)  # weights restored on one device would not match the mesh
    abstract = jax.eval_shape(init_state, *args)
    shardings = state_shardings(mesh, abstract)
    target = abstract_with_shardings(abstract, shardings)
    changed = {} if config is None or checkpoints.latest_step() is None else \
        config_lib.changes(checkpoints.workdir, config, resume=True)
    advice = "Use another workdir, or the run's own settings"
    if changed:
        raise StateMismatch(f"{checkpoints.workdir} holds checkpoints of another run (changed from its config.json: "
                            f"{config_lib.describe_changes(changed)}). {advice}")
    try:
        state, start = checkpoints.restore_latest(target)
    except StateMismatch as error:
        raise StateMismatch(f"{error}. {advice}") from None
    if start is None:
        return jax.jit(init_state, out_shardings=shardings)(*args), 0, target
    print(f"resumed from step {start} in {checkpoints.workdir}", flush=True)
    return state, start, target


def jit_step(step: Callable, target: Any, batch_shardings: Sequence[Any], mesh) -> Callable:
    """``step(state, *batch, key) -> (state, metrics)`` jitted over the mesh, the state donated."""
    shardings = jax.tree.map(lambda x: x.sharding, target)
    return jax.jit(step, in_shardings=(shardings, *batch_shardings, meshlib.replicated(mesh)),
                   out_shardings=(shardings, meshlib.replicated(mesh)), donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class Hook:
    """``fn(state, step)`` every ``every`` steps and at the last one (0: never)."""

    every: int
    fn: Callable[[TrainState, int], Any]

    def due(self, step: int, total: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == total)


class _StopRequest:
    """SIGTERM (preemption) and Ctrl-C set a flag; the loop saves a checkpoint and stops."""

    def __init__(self):
        self.signum = 0
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        self.signum = signum
        print(f"received signal {signum}: saving a checkpoint and stopping", flush=True)

    def agreed(self, step: int, every: int) -> bool:
        """Whether to stop now: this process's flag, agreed over all processes at log intervals."""
        if jax.process_count() > 1:
            if step % every:
                return False
            flags = multihost_utils.process_allgather(np.asarray(self.signum))
            self.signum = int(np.max(flags))
        return bool(self.signum)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def run(state: TrainState, step_fn: Callable, batches: Iterator[dict], key: jax.Array, *, keys: Sequence[str],
        start: int, schedule: Schedule, reporter: Reporter, checkpoints: Checkpoints, log_every: int,
        checkpoint_every: int, stop_at: int | None = None, hooks: Sequence[Hook] = (), sources: Sequence[str] = ()
        ) -> tuple[TrainState, int, dict[str, float]]:
    """Steps from ``start`` to ``stop_at`` (default: the last step), ``step_fn(state, *batch[keys], key)``.

    Every ``log_every`` steps (and at the last) it checks for a non-finite step and logs the
    interval's mean loss, the learning rate, the last gradient norm and, with ``sources`` (names of
    the batches' ``source`` indices: a mixture of folders), the interval's examples drawn from each
    (``drawn/<name>``, all processes); hooks run when due; a
    checkpoint is saved every ``checkpoint_every`` steps, at ``stop_at`` and on a stop signal (then
    :class:`Interrupted`). Closes ``batches``. Returns (state, step reached, last logged metrics).
    """
    total = schedule.total_steps
    close = getattr(batches, "close", lambda: None)  # generators and the input pipeline's iterators
    if start > total:
        close()
        raise ValueError(f"the workdir holds a checkpoint at step {start}, past this run's {total} steps; use "
                         f"another workdir, or at least {start} steps (train.num_steps / train.epochs)")
    if start == total:
        print(f"the checkpoint is at the last step ({total}): nothing to train", flush=True)
    stop_at = total if stop_at is None else stop_at
    if jax.process_index() == 0 and start < stop_at:
        print(f"steps {start + 1}-{stop_at} of {total}, batch {schedule.global_batch}; {schedule.description}",
              flush=True)
    stop = _StopRequest()
    pending, last, step = [], {}, start
    drawn = np.zeros(len(sources), np.int64)
    try:
        reporter.resume(step)
        if jax.process_index() == 0 and step < stop_at:
            print("compiling the train step (the first step includes it)", flush=True)
        while step < stop_at:
            item = next(batches)
            state, metrics = step_fn(state, *(item[k] for k in keys), key)
            step += 1
            pending.append(metrics)
            if sources:
                drawn += np.bincount(item["source"], minlength=len(sources))
            interval = step % log_every == 0 or step == total
            if interval or step == start + 1:  # after the first step: compiled, so the rate starts here
                raise_if_bad(state)
                if interval:
                    values = [scalars(m) for m in pending]
                    pending = []
                    last = {"loss": float(np.mean([v["loss"] for v in values])),
                            "lr": float(schedule.learning_rate(step - 1)), "grad_norm": values[-1]["grad_norm"]}
                    if sources and jax.process_count() > 1:
                        drawn = multihost_utils.process_allgather(drawn).sum(axis=0)
                    reporter.log(step, last | {f"drawn/{n}": int(c) for n, c in zip(sources, drawn)})
                    drawn[:] = 0
                else:
                    reporter.first_step(step, scalars(metrics))
            due = [hook for hook in hooks if hook.due(step, total)]
            for hook in due:
                hook.fn(state, step)
            if due:  # evaluation time is not training time
                reporter.reset_clock(step)
            if step % checkpoint_every == 0 or step == stop_at or stop.agreed(step, log_every):
                raise_if_bad(state)
                checkpoints.save(step, state)
                if stop.signum:
                    break
        checkpoints.wait()
    finally:
        close()
        stop.restore()
    if stop.signum:
        raise Interrupted(stop.signum, step, checkpoints.workdir)
    return state, step, last


def restore_best(checkpoints: Checkpoints, state: TrainState, target: Any, step: int) -> tuple[TrainState, int]:
    """The kept best state (by the validation metric) and its step; the final state without one."""
    selected = checkpoints.best_step()
    if selected is None:
        return state, step
    if selected != step:
        try:
            state = checkpoints.restore(selected, target, best=True)
        except (DamagedCheckpoint, ValueError) as error:  # ValueError: its checksums cannot be read
            print(f"warning: the best checkpoint is damaged ({error}); keeping the final state of step {step}",
                  flush=True)
            return state, step
    return state, selected
