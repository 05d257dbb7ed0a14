"""The train steps' math, to be jitted by the trainers, ``stmem-plan`` and the benchmarks (built by
``stmem_jax.train.setup``): the pre-training step of any method and the classifier step, each over
micro-batches with the loop's guarded update. Imports nothing of TensorFlow, so a host without it
(a GPU machine for benchmarks) runs them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from stmem_jax import microbatch
from stmem_jax.methods import Method
from stmem_jax.ops import random_lead_masking
from stmem_jax.train import loop


def classification_loss(logits: jax.Array, labels: jax.Array, multilabel: bool) -> jax.Array:
    """Sigmoid binary cross-entropy (multi-label) or softmax cross-entropy (class indices)."""
    logits = logits.astype(jnp.float32)
    if multilabel:
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def pretrain_step(method: Method, model: nn.Module, tx: optax.GradientTransformation, accum_steps: int,
                  leads: tuple[int, ...], total_steps: int, lead_masking: float = 0.0, restandardize: bool = False):
    """``step(state, *inputs, key)``: one optimizer step of ``method`` over a global batch (``inputs``
    in ``method.inputs`` order). Each input first gets random lead masking (``lead_masking`` > 0,
    ``ops.random_lead_masking``); the method draws its per-example randomness for the whole batch
    from ``fold_in(key, step)``; the loss's gradients are averaged over ``accum_steps`` micro-batches
    (``stmem_jax.microbatch``; only a method whose loss is a mean over examples is split); the update
    is the loop's guarded one, the method's extra state following the new parameters."""
    if accum_steps > 1 and not method.splittable:
        raise ValueError(f"{method.label}'s loss couples the examples of a batch: it cannot be split into "
                         f"{accum_steps} micro-batches (set train.grad_accum_steps=1 or a smaller batch)")

    def step(state: loop.TrainState, *args):
        *inputs, key = args
        step_key = jax.random.fold_in(key, state.step)
        rows = dict(zip(method.inputs, inputs, strict=True))
        if lead_masking:
            masking_key = jax.random.fold_in(step_key, 1)
            rows = {name: random_lead_masking(x, jax.random.fold_in(masking_key, i), lead_masking, restandardize)
                    for i, (name, x) in enumerate(rows.items())}
        rows |= method.randomness(model, rows, step_key)

        def loss_and_aux(params, micro):
            out = method.loss(model, params, state.extra, micro, leads)
            return out if isinstance(out, tuple) else (out, None)

        def grad_fn(params, micro, index):
            del index
            return jax.value_and_grad(loss_and_aux, has_aux=True)(params, micro)

        (loss, aux), grads = microbatch.mean_gradients(grad_fn, state.params, rows, accum_steps)
        progress = (state.step + 1) / total_steps
        return loop.guarded_update(state, tx, loss, grads,
                                   lambda params: method.update_extra(model, params, state.extra, progress, aux))

    return step


def classifier_step(model: nn.Module, tx: optax.GradientTransformation, multilabel: bool,
                    lead_ids: tuple[int, ...], accum_steps: int = 1, frozen: tuple[str, ...] = ()):
    """One optimizer step of a classifier, as ``accum_steps`` micro-batches whose gradients are averaged
    (``stmem_jax.microbatch``); dropout / drop-path keys from ``fold_in(key, step)`` (and the
    micro-batch's number). The top-level parameter parts in ``frozen`` (a linear probe's
    ``encoder``) pass through ``stop_gradient``: no backward pass through them."""

    def step(state: loop.TrainState, series: jax.Array, labels: jax.Array, key: jax.Array):
        step_key = jax.random.fold_in(key, state.step)

        def loss_of(params, micro, rng):
            params = {k: jax.lax.stop_gradient(v) if k in frozen else v for k, v in params.items()}
            logits = model.apply({"params": params}, micro[0], leads=lead_ids, train=True, rngs={"dropout": rng})
            return classification_loss(logits, micro[1], multilabel)

        def grad_fn(params, micro, index):
            rng = step_key if index is None else jax.random.fold_in(step_key, index)
            return jax.value_and_grad(loss_of)(params, micro, rng)

        loss, grads = microbatch.mean_gradients(grad_fn, state.params, (series, labels), accum_steps)
        return loop.guarded_update(state, tx, loss, grads)

    return step
