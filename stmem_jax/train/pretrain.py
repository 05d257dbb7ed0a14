"""``stmem-pretrain``: masked-autoencoder pre-training from an ml_collections config.

    stmem-pretrain --config configs/pretrain/st_mem.py:vit_base --workdir runs/vit_base \\
        --config.data.dir=/data/pretrain_shards --config.train.batch_size=1024

The same code runs on one CPU, one or several GPUs, or a TPU pod (one process per host). The loss
is the model's masked reconstruction loss; the evaluator its mean over the validation split (the
best state is kept in ``<workdir>/best``) and a reconstruction figure. The loop
(``stmem_jax.train.loop``) resumes from the latest checkpoint in the workdir; at the end the
encoder alone is written to ``<workdir>/encoder`` and the whole model to ``<workdir>/model``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from stmem_jax import mesh as meshlib
from stmem_jax import flops, microbatch, models
from stmem_jax.cli import run_config_command
from stmem_jax.core.shards import read_manifests
from stmem_jax.data.pipeline import (InputConfig, global_batches, lead_indices_for, mixture_names, parse_weights,
                                     steps_per_epoch)
from stmem_jax.model_dir import save_model
from stmem_jax.ops import patch_errors, patchify
from stmem_jax.plots import reconstruction_figure
from stmem_jax.train import loop, steps
from stmem_jax.train.checkpoints import Checkpoints
from stmem_jax.train.config import DECODER_SIZES, ENCODER_SIZES
from stmem_jax.train.optim import from_config as optimizer
from stmem_jax.train.reporting import Reporter


def build_model(config: ml_collections.ConfigDict, lead_ids: tuple[int, ...]):
    """The pre-training model of ``config.model`` for inputs holding the leads ``lead_ids``."""
    m = config.model
    overrides = {k: m[k] for k in ENCODER_SIZES + DECODER_SIZES if m.get(k) is not None}
    model = models.pretraining_model(m.kind, m.preset, lead_ids, dtype=jnp.dtype(m.dtype),
                                     seq_len=config.data.crop_samples, norm_pix_loss=m.norm_pix_loss,
                                     remat=m.remat, **overrides)
    models.check_leads(model, lead_ids, config.data.leads)
    return model


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) pre-training on ``config.data.dir`` (one folder or several, mixed by
    ``data.weights``); returns a summary (final step, last losses, paths). Raises ``loop.Interrupted`` when stopped by a signal (a checkpoint is kept)."""
    meshlib.initialize_from_config(config)
    if not config.data.dir:
        raise ValueError("pre-training needs data.dir (a stmem-prepare output); the stmem-pretrain command "
                         "prepares the built-in synthetic data when it is empty")
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    data_dir = config.data.dir
    mesh = meshlib.make_mesh(config.mesh.fsdp)
    input_config = InputConfig(data_dir=data_dir, split=config.data.split, batch_size=config.train.batch_size,
                               training=True, leads=config.data.leads, crop_samples=config.data.crop_samples,
                               bandpass=config.data.bandpass, seed=config.train.seed,
                               shuffle_buffer=config.data.shuffle_buffer, weights=parse_weights(config.data.weights))
    lead_ids = lead_indices_for(input_config)
    model = build_model(config, lead_ids)
    schedule = loop.Schedule.of(config.train, config.train.batch_size, steps_per_epoch(input_config))
    accum_steps = microbatch.count(config.train.batch_size, config.train.grad_accum_steps, mesh.devices.flat,
                                   flops.activation(model, len(lead_ids), config.model.mask_ratio))
    init_key, mask_key = jax.random.split(jax.random.key(config.train.seed))
    example = jnp.zeros((1, len(lead_ids), config.data.crop_samples), jnp.float32)

    def init_params():
        return model.init({"params": init_key, "masking": init_key}, example, leads=lead_ids)["params"]

    tx = optimizer(config.train, schedule.learning_rate, jax.eval_shape(init_params))
    total = schedule.total_steps
    with Checkpoints(workdir, config.checkpoint.keep, asynchronous=config.checkpoint.asynchronous,
                     best_metric="val_loss" if config.eval.every_steps else None) as checkpoints, \
            Reporter(workdir, total, schedule.steps_per_epoch, config.train.batch_size) as reporter:
        state, start, target = loop.init_or_restore(lambda: loop.TrainState.create(init_params(), tx), mesh,
                                                    checkpoints)
        if jax.process_index() == 0:
            with open(os.path.join(workdir, "config.json"), "w") as f:
                f.write(config.to_json(indent=2))
        step_fn = loop.jit_step(steps.pretrain_step(model, tx, config.model.mask_ratio, accum_steps, lead_ids), target,
                                [meshlib.batch_sharding(mesh)], mesh)
        evaluator = _Evaluator(config, model, mesh, data_dir, lead_ids, workdir)

        def validate(state, step):
            value = evaluator.loss(state.params)
            if value is not None:
                reporter.write(step, {"loss": value}, prefix="validation")
                checkpoints.save_best(step, state, {"val_loss": value})

        hooks = [loop.Hook(config.eval.every_steps, validate),
                 loop.Hook(config.log.figure_every_steps, lambda state, step: evaluator.figure(state.params, step))]
        stop_at = min(total, start + config.train.max_steps_per_run) if config.train.max_steps_per_run else total
        state, step, last = loop.run(
            state, step_fn, global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES, start_step=start),
            mask_key, keys=("series",), start=start, schedule=schedule, reporter=reporter, checkpoints=checkpoints,
            log_every=config.log.every_steps, checkpoint_every=config.checkpoint.every_steps, stop_at=stop_at,
            hooks=hooks, sources=mixture_names(input_config))
    summary = {"step": int(step), "total_steps": total, "workdir": workdir, **last,
               "process": jax.process_index(), "local_params_checksum": _local_checksum(state.params)}
    if step == total:
        summary |= _export(model, state, workdir, config, mesh)
    return summary


def _local_checksum(params) -> float:
    """Sum of |x| over this process's first shard of every parameter (replicas must agree)."""
    return float(sum(np.abs(np.asarray(leaf.addressable_shards[0].data, np.float64)).sum()
                     for leaf in jax.tree.leaves(params)))


def _export(model, state: loop.TrainState, workdir: str, config, mesh) -> dict[str, str]:
    """Writes the whole model and the encoder alone, for downstream use (all processes take part)."""
    variables = {"params": state.params}
    meta = {"step": int(state.step), "config": json.loads(config.to_json())}
    paths = {"model_dir": os.path.join(workdir, "model"), "encoder_dir": os.path.join(workdir, "encoder")}
    save_model(paths["model_dir"], model, variables, overwrite=True, metadata=meta)
    encoder, encoder_vars = models.pretrained_encoder(model, variables)
    table = encoder_vars["params"]["encoder"]["pos_embedding"]
    encoder_vars["params"]["encoder"]["pos_embedding"] = jax.device_put(np.asarray(table), meshlib.replicated(mesh))
    save_model(paths["encoder_dir"], encoder, encoder_vars, overwrite=True, metadata=meta)
    return paths


class _Evaluator:
    """Validation reconstruction loss and the reconstruction figure, on fixed masks."""

    def __init__(self, config, model, mesh, data_dir, lead_ids, workdir):
        self.config, self.model, self.mesh, self.lead_ids = config, model, mesh, lead_ids
        self.figure_dir = os.path.join(workdir, "figures")
        self.has_validation = any(config.data.val_split in m["splits"] for m in read_manifests(data_dir).values())
        split = config.data.val_split if self.has_validation else config.data.split
        self.input = InputConfig(data_dir=data_dir, split=split, batch_size=config.eval.batch_size, training=False,
                                 leads=config.data.leads, crop_samples=config.data.crop_samples,
                                 bandpass=config.data.bandpass, eval_crops=1)
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
        """Reconstruction of a fixed example (all processes compute, process 0 writes), for families
        that reconstruct each lead."""
        if not models.family(self.model).lead_figure:
            return None
        if self._example is None:
            self._example = next(self._batches())[0]
        noise = jax.random.uniform(self.key, self.model.noise_shape(self._example.shape))
        _, pred, mask = self.errors(params, self._example, noise)
        series, pred, mask = (np.asarray(multihost_utils.process_allgather(x, tiled=True))[0]
                              for x in (self._example, pred, mask))
        if jax.process_index() != 0:
            return None
        return reconstruction_figure(series, pred, mask, os.path.join(self.figure_dir, f"reconstruction_{step:07d}.png"),
                                     lead_ids=self.lead_ids, norm_pix_loss=self.config.model.norm_pix_loss,
                                     title=f"masked reconstruction, step {step}")


def main(argv=None) -> None:
    run_config_command(train, argv, example="configs/pretrain/st_mem.py:vit_base",
                       workdir_help="run directory (checkpoints, logs, figures); a run resumes from it")


if __name__ == "__main__":
    main()
