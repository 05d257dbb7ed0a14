"""Pre-training of any method (``config.method``, ``stmem_jax.methods``): the driver behind
``stmem-pretrain``.

    stmem-pretrain --config st_mem:vit_base --workdir runs/vit_base \\
        --config.data.dir=/data/pretrain_shards --config.train.batch_size=1024

The same code runs on one CPU, one or several GPUs, or a TPU pod (one process per host). The
method brings its model, loss, validation metric and figure, and the encoder it exports; this
driver gives it the data, the shared set-up (``stmem_jax.train.setup``), validation over the
validation split at intervals (the best state is kept in ``<workdir>/best``), figures, and the
loop (``stmem_jax.train.loop``), which resumes from the latest checkpoint in the workdir. At the
end the encoder alone is written to ``<workdir>/encoder`` and the whole model (with the method's
state, e.g. CPC's running statistics) to ``<workdir>/model``, each with the input recipe it was
trained on (``metadata.recipe`` in ``model.json``: rate, window, filter, crop length).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from stmem_jax import methods
from stmem_jax import mesh as meshlib
from stmem_jax.core import fileio
from stmem_jax.core.shards import read_manifests
from stmem_jax.core.recipe import Recipe
from stmem_jax.data.pipeline import (InputConfig, global_batches, input_options, lead_indices_for, mixture_names,
                                     model_recipe, parse_weights, steps_per_epoch)
from stmem_jax.model_dir import save_model
from stmem_jax.train import loop, setup
from stmem_jax.train.checkpoints import Checkpoints
from stmem_jax.train import config as config_lib
from stmem_jax.train.reporting import Reporter


def train(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) pre-training on ``config.data.dir`` (one folder or several, mixed by
    ``data.weights``); returns a summary (final step, last losses, paths). Raises ``loop.Interrupted``
    when stopped by a signal (a checkpoint is kept). ``config`` is resolved first
    (``config.resolve_recipe``: the authors' recipe unless ``config.recipe`` says otherwise)."""
    config = config_lib.resolve_recipe(config)
    config_lib.check_values(config)
    meshlib.initialize_from_config(config)
    if not config.data.dir:
        raise ValueError("pre-training needs data.dir (a stmem-prepare output); the stmem-pretrain command "
                         "prepares the built-in synthetic data when it is empty")
    method = methods.get(config.method)
    workdir = fileio.absolute(workdir)
    fileio.makedirs(workdir)
    mesh = meshlib.make_mesh(config.mesh.fsdp)
    input_config = method_input(config, method, config.data.split, True, config.train.batch_size)
    lead_ids = lead_indices_for(input_config)
    schedule = loop.Schedule.of(config.train, config.train.batch_size, steps_per_epoch(input_config))
    run = setup.build(config, lead_ids, schedule, mesh.devices.flat)
    total = schedule.total_steps
    if not method.splittable and jax.process_index() == 0:
        print(f"{method.label}'s loss couples the examples of a batch: every step is one batch of "
              f"{config.train.batch_size} over {mesh.devices.size} device(s), never split into micro-batches "
              f"(for less memory: a smaller train.batch_size, model.remat=True or more devices)", flush=True)
    with contextlib.ExitStack() as stack:
        checkpoints = stack.enter_context(Checkpoints(workdir, config.checkpoint.keep,
                                                      asynchronous=config.checkpoint.asynchronous,
                                                      best_metric="val_loss" if config.eval.every_steps else None))
        state, start, target = loop.init_or_restore(run.init_state, mesh, checkpoints, config=config)
        config_lib.save(workdir, config)
        reporter = stack.enter_context(Reporter(workdir, total, schedule.steps_per_epoch, config.train.batch_size))
        step_fn = loop.jit_step(run.step, target, [meshlib.batch_sharding(mesh)] * len(run.inputs), mesh)
        evaluator = _Evaluator(config, method, run.model, mesh, lead_ids, workdir)

        def validate(state, step):
            value = evaluator.loss(state)
            if value is not None:
                reporter.write(step, {"loss": value}, prefix="validation")
                checkpoints.save_best(step, state, {"val_loss": value})

        hooks = [loop.Hook(config.eval.every_steps, validate),
                 loop.Hook(config.log.figure_every_steps, lambda state, step: evaluator.figure(state, step))]
        stop_at = min(total, start + config.train.max_steps_per_run) if config.train.max_steps_per_run else total
        batches = _FirstChecked(global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES, start_step=start),
                                method)
        state, step, last = loop.run(
            state, step_fn, batches, run.key, keys=run.inputs, start=start, schedule=schedule, reporter=reporter,
            checkpoints=checkpoints, log_every=config.log.every_steps, checkpoint_every=config.checkpoint.every_steps,
            stop_at=stop_at, hooks=hooks, sources=mixture_names(input_config))
    summary = {"step": int(step), "total_steps": total, "workdir": workdir, **last,
               "process": jax.process_index(), "local_params_checksum": _local_checksum(state.params)}
    if step == total:
        summary |= _export(method, run.model, state, workdir, config, mesh, _trained_recipe(input_config))
    return summary


def method_input(config: ml_collections.ConfigDict, method: methods.Method, split: str, training: bool,
                 batch_size: int) -> InputConfig:
    """The pipeline of ``method``'s inputs (its views) with the config's data settings."""
    d = config.data
    return InputConfig(data_dir=d.dir, split=split, batch_size=batch_size, training=training, leads=d.leads,
                       crop_samples=d.crop_samples, seed=config.train.seed, shuffle_buffer=d.shuffle_buffer,
                       weights=parse_weights(d.weights) if training else None, views=method.inputs,
                       segment_samples=d.segment_samples, sample_rate=d.sample_rate, augment=d.augment, eval_crops=1,
                       **input_options(d))


def _trained_recipe(input_config: InputConfig) -> Recipe:
    """The input the pre-trained model met (the data's recipe at ``data.sample_rate`` and
    ``data.crop_samples``), with the recipe's evaluation crops: what its users feed it."""
    return dataclasses.replace(model_recipe(input_config), eval_crops=Recipe.eval_crops)


class _FirstChecked:
    """Batches whose first one the method checks (``Method.check_batch``) before it trains on it."""

    def __init__(self, batches, method: methods.Method):
        self.batches, self.method, self.checked = batches, method, False

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.batches)
        if not self.checked:
            self.checked = True
            self.method.check_batch({name: batch[name] for name in self.method.inputs})
        return batch

    def close(self) -> None:
        getattr(self.batches, "close", lambda: None)()


def _local_checksum(params) -> float:
    """Sum of |x| over this process's first shard of every parameter (replicas must agree)."""
    return float(sum(np.abs(np.asarray(leaf.addressable_shards[0].data, np.float64)).sum()
                     for leaf in jax.tree.leaves(params)))


def _export(method, model, state: loop.TrainState, workdir: str, config, mesh, recipe: Recipe) -> dict[str, str]:
    """Writes the whole model (with the method's state, if it keeps one) and the method's encoder
    alone, for downstream use, each with the input recipe it was trained on (all processes take part)."""
    variables = {"params": state.params} | ({} if state.extra is None else {"extra": state.extra})
    meta = {"step": int(state.step), "method": method.name, "config": json.loads(config.to_json()),
            "recipe": recipe.to_dict()}
    paths = {"model_dir": fileio.join(workdir, "model"), "encoder_dir": fileio.join(workdir, "encoder")}
    save_model(paths["model_dir"], model, variables, overwrite=True, metadata=meta, kind=method.name)
    encoder, encoder_vars = method.encoder(model, variables)
    encoder_vars = jax.tree.map(  # new arrays (tables that became parameters) join the mesh, replicated
        lambda x: jax.device_put(x, meshlib.replicated(mesh)) if isinstance(x, np.ndarray) else x, encoder_vars)
    save_model(paths["encoder_dir"], encoder, encoder_vars, overwrite=True, metadata=meta)
    return paths


class _Evaluator:
    """The method's validation metric over the validation split and its figure of a fixed example,
    both with fixed randomness (the same at every evaluation)."""

    def __init__(self, config, method, model, mesh, lead_ids, workdir):
        self.method, self.model, self.mesh, self.lead_ids = method, model, mesh, lead_ids
        self.figure_dir = fileio.join(workdir, "figures")
        data_dir = config.data.dir
        self.has_validation = any(config.data.val_split in m["splits"] for m in read_manifests(data_dir).values())
        split = config.data.val_split if self.has_validation else config.data.split
        self.input = method_input(config, method, split, False, config.eval.batch_size)
        self.key = jax.random.key(config.train.seed + 1)

        def values(params, extra, rows, key):
            rows = rows | method.randomness(model, rows, key)
            return method.validation(model, params, extra, rows, lead_ids)

        self.values = jax.jit(values)
        self._example = None

    def _batches(self):
        for batch in global_batches(self.input, self.mesh, data_axis=meshlib.BATCH_AXES):
            rows = {name: batch[name][:, 0] if name == "series" else batch[name] for name in self.method.inputs}
            yield rows | {"valid": batch["valid"]}, batch["valid"]

    def loss(self, state: loop.TrainState) -> float | None:
        """Mean metric over the validation split (each example once), or None without one."""
        if not self.has_validation:
            return None
        total, count = 0.0, 0
        for i, (rows, valid) in enumerate(self._batches()):
            per_example = self.values(state.params, state.extra, rows, jax.random.fold_in(self.key, i))
            per_example, valid = multihost_utils.process_allgather((per_example, valid), tiled=True)
            total += float(np.sum(np.where(valid, per_example, 0.0)))
            count += int(np.sum(valid))
        return total / max(count, 1)

    def figure(self, state: loop.TrainState, step: int) -> str | None:
        """The method's figure of the first validation example (every process gathers the
        parameters, process 0 draws it)."""
        if self._example is None:
            rows, _ = next(self._batches())
            self._example = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))[:1]
                             for k, v in rows.items()}
        params = multihost_utils.process_allgather(state.params, tiled=True)
        if jax.process_index() != 0:
            return None
        rows = self._example | self.method.randomness(self.model, self._example, self.key)
        return self.method.figure(self.model, params, rows, self.lead_ids,
                                  fileio.join(self.figure_dir, f"reconstruction_{step:07d}.png"),
                                  title=f"{self.method.label}, step {step}")
