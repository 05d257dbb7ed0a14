"""The train steps' math, to be jitted by the trainers, ``stmem-plan`` and the benchmarks: the
pre-training step and the classifier step, each over micro-batches with the loop's guarded update.
Imports nothing of TensorFlow, so a host without it (a GPU machine for benchmarks) runs them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from stmem_jax import microbatch
from stmem_jax.train import loop


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Sigmoid binary cross-entropy (multi-label) or softmax cross-entropy (class indices)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def pretrain_step(model: nn.Module, tx: optax.GradientTransformation, mask_ratio: float, accum_steps: int,
                  leads: tuple[int, ...]):
    """One optimizer step over a global batch, as ``accum_steps`` micro-batches whose gradients are
    averaged (``stmem_jax.microbatch``). Masking noise comes from ``fold_in(key, step)`` for the whole
    batch; the update is the loop's guarded one."""

    def grad_fn(params, micro, index):
        del index
        series, noise = micro
        return jax.value_and_grad(lambda p: model.apply({"params": p}, series, mask_ratio=mask_ratio, noise=noise,
                                                        leads=leads)["loss"])(params)

    def step(state: loop.TrainState, series: jax.Array, key: jax.Array):
        noise = jax.random.uniform(jax.random.fold_in(key, state.step), model.noise_shape(series.shape))
        loss, grads = microbatch.mean_gradients(grad_fn, state.params, (series, noise), accum_steps)
        return loop.guarded_update(state, tx, loss, grads)

    return step


def classifier_step(model: nn.Module, tx: optax.GradientTransformation, multilabel: bool,
                    lead_ids: tuple[int, ...], accum_steps: int = 1):
    """One optimizer step of a classifier, as ``accum_steps`` micro-batches whose gradients are averaged
    (``stmem_jax.microbatch``); dropout / drop-path keys from ``fold_in(key, step)`` (and the
    micro-batch's number)."""

    def step(state: loop.TrainState, series: jax.Array, labels: jax.Array, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)

        def grad_fn(params, micro, index):
            rng = step_key if index is None else jax.random.fold_in(step_key, index)
            return jax.value_and_grad(lambda p: classification_loss(
                model.apply({"params": p}, micro[0], leads=lead_ids, train=True, rngs={"dropout": rng}),
                micro[1], multilabel))(params)

        loss, grads = microbatch.mean_gradients(grad_fn, state.params, (series, labels), accum_steps)
        return loop.guarded_update(state, tx, loss, grads)

    return step
