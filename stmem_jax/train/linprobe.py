"""Linear probing on cached features (``stmem-finetune --config.mode=linprobe
--config.train.linprobe=cached_features``, stmem-jax's fast path): the head alone trains on a frozen
encoder's features. (The authors' linear probe, the default, trains the head on augmented random
crops through the frozen encoder in the fine-tuning loop: ``stmem_jax.train.downstream``.)

The pooled features of the evaluation crops of every example are computed once and cached as
``.npz`` (``<workdir>/features`` unless ``data.feature_cache`` is set); the head trains on every
crop of the training examples, with the downstream optimizer settings (no augmentation), in the
same loop as the other trainers: checkpoints, resume, the non-finite guard and model selection on
the validation split. The test predictions are the head on the cached test features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from stmem_jax import infer, models
from stmem_jax import mesh as meshlib
from stmem_jax.core import fileio
from stmem_jax.data.tasks import Task
from stmem_jax.initialization import pytorch_defaults
from stmem_jax.train import loop
from stmem_jax.train.classification import (checkpoints_for, crop_predictions, eval_interval, num_examples,
                                            scalars_of, score, validation)
from stmem_jax.train.config import save as save_config
from stmem_jax.train.steps import classification_loss
from stmem_jax.train.optim import from_config as optimizer
from stmem_jax.train.reporting import Reporter


def _encoder_checksum(params: Any) -> str:
    values = [np.asarray(x, np.float64) for x in jax.tree.leaves(jax.device_get(params))]
    return repr([float(np.abs(v).sum()) for v in values])


def cached_features(config, workdir: str, task: Task, encoder: nn.Module, encoder_params: Any, mesh,
                    split: str, label_fraction: float = 1.0) -> dict[str, np.ndarray]:
    """Pooled features (N, crops, W) of every evaluation crop of ``split``, with labels and ids; read from
    the cache when an earlier run computed them with the same encoder weights and data settings."""
    input_config = task.input(config, split, False, config.eval.batch_size, label_fraction)
    # an evaluation input's seed draws only its label-fraction subset: the seeds of a grid share the rest
    keyed = input_config if label_fraction < 1 else dataclasses.replace(input_config, seed=0)
    key = json.dumps({"input": dataclasses.asdict(keyed), "encoder": models.model_config(encoder),
                      "weights": _encoder_checksum(encoder_params)}, sort_keys=True,
                     default=lambda v: sorted(v) if isinstance(v, frozenset) else str(v))
    directory = config.data.feature_cache or fileio.join(workdir, "features")
    path = fileio.join(directory, f"{split}-{hashlib.sha1(key.encode()).hexdigest()[:16]}.npz")
    found = np.asarray(fileio.isfile(path))
    if jax.process_count() > 1:
        found = multihost_utils.process_allgather(found)
    if np.all(found):
        with fileio.open(path, "rb") as f, np.load(f) as data:
            return dict(data)
    fn = infer.outputs_fn(encoder, task.lead_ids)
    params = jax.device_put({"encoder": jax.device_get(encoder_params)}, meshlib.replicated(mesh))
    features = infer.predict(fn, params, input_config, mesh)
    if jax.process_index() == 0:
        fileio.makedirs(directory)
        with fileio.open(path, "wb") as f:
            np.savez(f, **features)
    return features


def _feature_batches(x: np.ndarray, y: np.ndarray, batch: int, per_epoch: int, seed: int, start: int, mesh
                     ) -> Iterator[dict]:
    """Batches of (features, labels) from ``start`` on, as arrays replicated over the mesh (every process
    holds the same features); epoch e visits the examples in an order drawn from ``(seed, e)``."""
    sharding = meshlib.replicated(mesh)
    step, order_epoch, order = start, None, None
    while True:
        epoch, position = divmod(step, per_epoch)
        if epoch != order_epoch:  # one permutation per epoch
            order_epoch, order = epoch, np.random.default_rng([seed, epoch]).permutation(len(x))
        index = order[position * batch:][:batch]
        yield {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
               for k, v in (("features", x[index]), ("label", y[index]))}
        step += 1


def train_head(config, workdir, task, model, encoder_params, mesh, has_val):
    """The head trained on cached features of the frozen encoder (every process the same); returns
    (classifier params, selected step, validation metrics, test predictions)."""
    encoder = model.clone(num_classes=0)
    crops = num_examples(task.input(config, config.data.train_split, False, 1, config.data.label_fraction)) * \
        config.eval.crops  # every evaluation crop of every training example
    batch = min(config.train.batch_size, crops)
    schedule = loop.Schedule.of(config.train, batch, crops // batch)

    def head_logits(head, feats):
        return model.apply({"params": {"head": head}}, feats, method=lambda m, f: m.head(f))

    example = jnp.zeros((1, len(task.lead_ids), model.seq_len), jnp.float32)
    width = jax.eval_shape(lambda p: encoder.apply({"params": {"encoder": p}}, example, leads=task.lead_ids),
                           encoder_params).shape[-1]
    key = jax.random.key(config.train.seed)
    head = model.init(key, jnp.zeros((1, width)), method=lambda m, f: m.head(f))["params"]["head"]
    if config.model.init_scheme == "pytorch":
        head = pytorch_defaults({"head": head}, key)["head"]
    tx = optimizer(config.train, schedule.learning_rate, {"head": head})

    def step(state, xb, yb, key):
        del key
        loss, grads = jax.value_and_grad(
            lambda p: classification_loss(head_logits(p["head"], xb), yb, task.multilabel))(state.params)
        return loop.guarded_update(state, tx, loss, grads)

    logits_fn = jax.jit(head_logits)

    def predictions(state, split):
        logits = np.asarray(logits_fn(jax.device_get(state.params)["head"], features[split]["outputs"]))
        return crop_predictions({**features[split], "outputs": logits}, task.multilabel)

    def validate_head(state):
        return validation(config, task, predictions(state, config.data.val_split))

    with contextlib.ExitStack() as stack:
        checkpoints = stack.enter_context(checkpoints_for(config, workdir, has_val))
        state, start, target = loop.init_or_restore(lambda: loop.TrainState.create({"head": head}, tx), mesh,
                                                    checkpoints, config=config)
        save_config(workdir, config)
        features = {split: cached_features(config, workdir, task, encoder, encoder_params, mesh, split, fraction)
                    for split, fraction in [(config.data.train_split, config.data.label_fraction)]
                    + ([(config.data.val_split, 1.0)] if has_val else [])}
        train_set = features[config.data.train_split]
        x = train_set["outputs"].reshape(-1, train_set["outputs"].shape[-1])
        y = np.repeat(train_set["label"], train_set["outputs"].shape[1], axis=0)
        if len(x) != crops:
            raise RuntimeError(f"bug: {len(x)} training crops, {crops} counted")
        reporter = stack.enter_context(Reporter(workdir, schedule.total_steps, schedule.steps_per_epoch, batch))
        step_fn = loop.jit_step(step, target, [meshlib.replicated(mesh)] * 2, mesh)

        def validate(state, step):
            val = validate_head(state)
            reporter.write(step, scalars_of(val), prefix="validation")
            checkpoints.save_best(step, state, {"val_score": score(config, val)})

        state, step, _ = loop.run(
            state, step_fn, _feature_batches(x, y, batch, schedule.steps_per_epoch, config.train.seed, start, mesh),
            jax.random.key(0), keys=("features", "label"), start=start, schedule=schedule, reporter=reporter,
            checkpoints=checkpoints, log_every=config.log.every_steps, checkpoint_every=config.checkpoint.every_steps,
            hooks=[loop.Hook(eval_interval(config, schedule), validate)] if has_val else [])
        state, selected = loop.restore_best(checkpoints, state, target, step)
    val = validate_head(state) if has_val else None
    features[config.data.test_split] = cached_features(config, workdir, task, encoder, encoder_params, mesh,
                                                       config.data.test_split)
    params = {"encoder": jax.device_get(encoder_params), "head": jax.device_get(state.params)["head"]}
    return (jax.device_put(params, meshlib.replicated(mesh)), selected, val,
            predictions(state, config.data.test_split))
