"""``stmem-pretrain``: masked-autoencoder pre-training from an ml_collections config.

    stmem-pretrain --config configs/pretrain/st_mem.py:vit_base --workdir runs/vit_base \\
        --config.data.dir=/data/pretrain_shards --config.train.batch_size=1024

The same code runs on one CPU, one or several GPUs, or a TPU pod (one process per host). A run
resumes from the latest checkpoint in its workdir; at the end the encoder alone is written to
``<workdir>/encoder`` and the whole model to ``<workdir>/model`` (``stmem_jax.checkpoint``).
"""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils

from stmem_jax.checkpoint import save_model
from stmem_jax.cli import run_config_command
from stmem_jax.data.format import read_manifest
from stmem_jax.data.pipeline import InputConfig, global_batches, lead_indices_for, steps_per_epoch
from stmem_jax.models import create_model, pretrained_encoder
from stmem_jax.ops import patch_errors, patchify
from stmem_jax.plots import reconstruction_figure
from stmem_jax.train import mesh as meshlib
from stmem_jax.train.checkpointing import Checkpoints, abstract_with_shardings
from stmem_jax.train.optim import adamw, peak_learning_rate, schedule
from stmem_jax.train.reporting import Reporter, scalars

MODEL_FIELDS = ("width", "depth", "heads", "mlp_dim", "decoder_width", "decoder_depth", "decoder_heads")


class NonFiniteLoss(RuntimeError):
    """Raised when a step produced a non-finite loss or gradient; the message names the step."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    bad_step: jax.Array  # first step whose loss or gradient was not finite, -1 if none


def build_model(config: ml_collections.ConfigDict, leads: int):
    m = config.model
    overrides = {k: m[k] for k in MODEL_FIELDS if m.get(k) is not None}
    if m.kind != "st_mem":  # MTAE / MLAE tokens hold exactly the input's leads
        overrides["num_leads"] = leads
    return create_model(m.kind, m.preset, dtype=jnp.dtype(m.dtype), seq_len=config.data.crop_samples,
                        norm_pix_loss=m.norm_pix_loss, remat=m.remat,
                        **overrides)


def make_train_step(model, tx: optax.GradientTransformation, mask_ratio: float, accum_steps: int,
                    leads: tuple[int, ...]):
    """One optimizer step over a global batch, as ``accum_steps`` micro-batches whose gradients are
    averaged. Masking noise comes from ``fold_in(key, step)``; a non-finite loss or gradient
    leaves parameters and optimizer state unchanged and is recorded in ``bad_step``."""

    def loss_fn(params, series, noise):
        return model.apply({"params": params}, series, mask_ratio=mask_ratio, noise=noise, leads=leads)["loss"]

    def step(state: TrainState, series: jax.Array, key: jax.Array):
        noise = jax.random.uniform(jax.random.fold_in(key, state.step), model.noise_shape(series.shape))
        grad_fn = jax.value_and_grad(loss_fn)
        if accum_steps == 1:
            loss, grads = grad_fn(state.params, series, noise)
        else:
            # micro-batch i takes rows i, i + k, i + 2k, ...: each device keeps its own rows
            def split(x):
                return x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)

            def body(carry, micro):
                loss, grads = grad_fn(state.params, *micro)
                return jax.tree.map(jnp.add, carry, (loss, grads)), None

            zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.params))
            (loss, grads), _ = jax.lax.scan(body, zero, (split(series), split(noise)))
            loss, grads = jax.tree.map(lambda x: x / accum_steps, (loss, grads))
        grad_norm = optax.global_norm(grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
        bad_step = jnp.where((state.bad_step < 0) & ~finite, state.step, state.bad_step)
        new_state = TrainState(state.step + 1, keep(params, state.params), keep(opt_state, state.opt_state), bad_step)
        return new_state, {"loss": loss, "grad_norm": grad_norm}

    return step


def synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Generates and prepares the built-in synthetic dataset under ``<workdir>/data`` (process 0;
    the others wait). Reused when already there."""
    from data_prep.signals import Processing
    from data_prep.sources import PTBXL
    from data_prep.synthetic import write_ptbxl
    from data_prep.writer import prepare

    target = os.path.join(workdir, "data", "shards")
    if jax.process_index() == 0 and not os.path.exists(os.path.join(target, "manifest.json")):
        native = os.path.join(workdir, "data", "native")
        print(f"generating {config.data.synthetic_records} synthetic ECGs in {native}", flush=True)
        write_ptbxl(native, config.data.synthetic_records, seed=config.data.synthetic_seed,
                    workers=config.data.workers)
        prepare(PTBXL(native), target, Processing(), workers=config.data.workers, shard_windows=500)
    multihost_utils.sync_global_devices("synthetic data ready")
    return target


class _StopRequest:
    """SIGTERM (TPU preemption) and Ctrl-C set a flag; the loop saves a checkpoint and exits."""

    def __init__(self):
        self.requested = False
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        self.requested = True
        print(f"received signal {signum}: saving a checkpoint and stopping", flush=True)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) pre-training; returns a summary (final step, last losses, paths)."""
    d = config.distributed
    meshlib.initialize_distributed(d.coordinator_address, d.num_processes, d.process_id, d.auto)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data.dir or synthetic_data(config, workdir)
    manifest = read_manifest(data_dir)
    mesh = meshlib.make_mesh(config.mesh.fsdp)

    input_config = InputConfig(data_dir=data_dir, split=config.data.split, batch_size=config.train.batch_size,
                               training=True, leads=config.data.leads, crop_samples=config.data.crop_samples,
                               bandpass=config.data.bandpass, seed=config.train.seed,
                               shuffle_buffer=config.data.shuffle_buffer)
    lead_ids = lead_indices_for(input_config, manifest)
    model = build_model(config, len(lead_ids))
    per_epoch = steps_per_epoch(input_config)
    total_steps = config.train.num_steps or config.train.epochs * per_epoch
    warmup = config.train.warmup_steps if config.train.warmup_steps >= 0 else config.train.warmup_epochs * per_epoch
    peak = peak_learning_rate(config.train.lr, config.train.base_lr, config.train.batch_size)
    lr_schedule = schedule(peak, total_steps, warmup, config.train.min_lr)
    if config.train.batch_size % config.train.grad_accum_steps:
        raise ValueError(f"batch_size {config.train.batch_size} is not divisible by "
                         f"grad_accum_steps {config.train.grad_accum_steps}")

    key = jax.random.key(config.train.seed)
    init_key, mask_key = jax.random.split(key)
    example = jnp.zeros((1, len(lead_ids), config.data.crop_samples), jnp.float32)

    def init_params():
        return model.init({"params": init_key, "masking": init_key}, example, leads=lead_ids)["params"]

    tx = adamw(lr_schedule, jax.eval_shape(init_params), b1=config.train.b1, b2=config.train.b2,
               weight_decay=config.train.weight_decay, clip_norm=config.train.clip_norm)

    def init_state() -> TrainState:
        params = init_params()
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jnp.full((), -1, jnp.int32))

    abstract = jax.eval_shape(init_state)
    shardings = TrainState(meshlib.replicated(mesh), meshlib.state_shardings(mesh, abstract.params),
                           meshlib.state_shardings(mesh, abstract.opt_state), meshlib.replicated(mesh))
    checkpoints = Checkpoints(workdir, config.checkpoint.keep, asynchronous=config.checkpoint.asynchronous,
                              best_metric="val_loss" if config.eval.every_steps else None)
    start = checkpoints.latest_step()
    if start is None:
        state = jax.jit(init_state, out_shardings=shardings)()
        start = 0
    else:
        state = checkpoints.restore(start, abstract_with_shardings(abstract, shardings))
        print(f"resumed from step {start} in {workdir}", flush=True)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json(indent=2))

    step_fn = jax.jit(make_train_step(model, tx, config.model.mask_ratio, config.train.grad_accum_steps, lead_ids),
                      in_shardings=(shardings, meshlib.batch_sharding(mesh), meshlib.replicated(mesh)),
                      out_shardings=(shardings, meshlib.replicated(mesh)), donate_argnums=0)
    evaluator = _Evaluator(config, model, mesh, data_dir, manifest, lead_ids, workdir)
    reporter = Reporter(workdir, total_steps, per_epoch, config.train.batch_size)
    stop = _StopRequest()
    batches = global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES, start_step=start)
    pending: list[dict] = []
    last = {}
    stop_at = min(total_steps, start + config.train.max_steps_per_run) if config.train.max_steps_per_run \
        else total_steps
    try:
        step = start
        reporter.reset_clock(step)
        while step < stop_at:
            state, metrics = step_fn(state, next(batches)["series"], mask_key)
            step += 1
            pending.append(metrics)
            interval = step % config.log.every_steps == 0 or step == total_steps
            if interval or step == start + 1:
                last = _check(state, pending, lr_schedule(step - 1))
                pending = []
                reporter.log(step, last) if interval else reporter.reset_clock(step)
            if config.eval.every_steps and (step % config.eval.every_steps == 0 or step == total_steps):
                val = evaluator.loss(state.params)
                if val is not None:
                    reporter.write(step, {"loss": val}, prefix="validation")
                    checkpoints.save_best(step, state, {"val_loss": val})
                reporter.reset_clock(step)
            if config.log.figure_every_steps and (step % config.log.figure_every_steps == 0 or step == total_steps):
                evaluator.figure(state.params, step)
            if step % config.checkpoint.every_steps == 0 or step == stop_at or _stop_agreed(stop, step, config):
                raise_if_bad(state)
                checkpoints.save(step, state)
                if stop.requested:
                    break
        checkpoints.wait()
    finally:
        batches.close()
        stop.restore()
        reporter.close()
        checkpoints.close()
    summary = {"step": int(step), "total_steps": total_steps, "workdir": workdir, **last,
               "process": jax.process_index(), "local_params_checksum": _local_checksum(state.params)}
    if step == total_steps:
        summary |= _export(model, state, workdir, config, mesh)
    return summary


def _stop_agreed(stop: _StopRequest, step: int, config) -> bool:
    """Whether to stop now: this process's flag, agreed over all processes at log intervals."""
    if jax.process_count() == 1:
        return stop.requested
    if step % config.log.every_steps:
        return False
    stop.requested = bool(np.any(multihost_utils.process_allgather(np.asarray(stop.requested))))
    return stop.requested


def raise_if_bad(state: TrainState) -> None:
    """Raises NonFiniteLoss naming the first step whose loss or gradient was not finite."""
    bad = int(jax.device_get(state.bad_step))
    if bad >= 0:
        raise NonFiniteLoss(f"non-finite loss or gradient at step {bad + 1}; the run stops and keeps the last "
                            f"checkpoint written before it")


def _check(state: TrainState, pending: list[dict], lr) -> dict[str, float]:
    """Fetches the interval's metrics; raises NonFiniteLoss naming the first bad step."""
    raise_if_bad(state)
    values = [scalars(m) for m in pending]
    return {"loss": float(np.mean([v["loss"] for v in values])), "lr": float(lr),
            "grad_norm": values[-1]["grad_norm"]}


def _local_checksum(params) -> float:
    """Sum of |x| over this process's first shard of every parameter (replicas must agree)."""
    return float(sum(np.abs(np.asarray(leaf.addressable_shards[0].data, np.float64)).sum()
                     for leaf in jax.tree.leaves(params)))


def _export(model, state: TrainState, workdir: str, config, mesh) -> dict[str, str]:
    """Writes the whole model and the encoder alone, for downstream use (all processes take part)."""
    variables = {"params": state.params}
    meta = {"step": int(state.step), "config": json.loads(config.to_json())}
    paths = {"model_dir": os.path.join(workdir, "model"), "encoder_dir": os.path.join(workdir, "encoder")}
    save_model(paths["model_dir"], model, variables, overwrite=True, metadata=meta)
    encoder, encoder_vars = pretrained_encoder(model, variables)
    table = encoder_vars["params"]["encoder"]["pos_embedding"]
    encoder_vars["params"]["encoder"]["pos_embedding"] = jax.device_put(np.asarray(table), meshlib.replicated(mesh))
    save_model(paths["encoder_dir"], encoder, encoder_vars, overwrite=True, metadata=meta)
    return paths


class _Evaluator:
    """Validation reconstruction loss and the reconstruction figure, on fixed masks."""

    def __init__(self, config, model, mesh, data_dir, manifest, lead_ids, workdir):
        self.config, self.model, self.mesh, self.lead_ids = config, model, mesh, lead_ids
        self.figure_dir = os.path.join(workdir, "figures")
        split = config.data.val_split if config.data.val_split in manifest["splits"] else config.data.split
        self.input = InputConfig(data_dir=data_dir, split=split, batch_size=config.eval.batch_size, training=False,
                                 leads=config.data.leads, crop_samples=config.data.crop_samples,
                                 bandpass=config.data.bandpass, eval_crops=1)
        self.has_validation = config.data.val_split in manifest["splits"]
        self.key = jax.random.key(config.train.seed + 1)
        mask_ratio, norm_pix = config.model.mask_ratio, config.model.norm_pix_loss

        def errors(params, series, noise):
            out = model.apply({"params": params}, series, mask_ratio=mask_ratio, noise=noise, leads=lead_ids)
            per_patch = patch_errors(out["pred"], patchify(series, model.patch_size), norm_pix)
            axes = tuple(range(1, per_patch.ndim))
            return (per_patch * out["mask"]).sum(axes) / out["mask"].sum(axes), out["pred"], out["mask"]

        self.errors = jax.jit(errors)
        self._example = None

    def _batches(self):
        for batch in global_batches(self.input, self.mesh, data_axis=meshlib.BATCH_AXES):
            yield batch["series"][:, 0], batch["valid"]

    def loss(self, params) -> float | None:
        """Mean loss over the validation split (each example once), or None without one."""
        if not self.has_validation:
            return None
        total, count = 0.0, 0
        for i, (series, valid) in enumerate(self._batches()):
            noise = jax.random.uniform(jax.random.fold_in(self.key, i), self.model.noise_shape(series.shape))
            per_example, _, _ = self.errors(params, series, noise)
            per_example, valid = multihost_utils.process_allgather((per_example, valid), tiled=True)
            total += float(np.sum(np.where(valid, per_example, 0.0)))
            count += int(np.sum(valid))
        return total / max(count, 1)

    def figure(self, params, step: int) -> str | None:
        """Reconstruction of a fixed example (all processes compute, process 0 writes)."""
        if self._example is None:
            series, _ = next(self._batches())
            self._example = series
        noise = jax.random.uniform(self.key, self.model.noise_shape(self._example.shape))
        _, pred, mask = self.errors(params, self._example, noise)
        if getattr(self.model, "token_axis", None) is not None:  # MTAE / MLAE: no per-lead figure
            return None
        series, pred, mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True))[0]
                              for x in (self._example, pred, mask))
        if jax.process_index() != 0:
            return None
        return reconstruction_figure(series, pred, mask, os.path.join(self.figure_dir, f"reconstruction_{step:07d}.png"),
                                     lead_ids=self.lead_ids, norm_pix_loss=self.config.model.norm_pix_loss,
                                     title=f"masked reconstruction, step {step}")


def main(argv=None) -> None:
    def run(config, workdir):
        start = time.time()
        summary = train(config, workdir)
        print("summary: " + json.dumps({**summary, "wall_s": round(time.time() - start, 1)}), flush=True)

    run_config_command(run, argv, example="configs/pretrain/st_mem.py:vit_base",
                       workdir_help="run directory (checkpoints, logs, figures); a run resumes from it")


if __name__ == "__main__":
    main()
