"""One place that builds a run's model, optimizer, initial state and train step from its config:
the trainers, ``stmem-plan`` and ``benchmarks/train_throughput.py`` all start from :func:`build`.
Imports nothing of TensorFlow."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from stmem_jax import methods, microbatch, models
from stmem_jax.initialization import pytorch_defaults
from stmem_jax.train import loop, steps
from stmem_jax.train.config import resolve_recipe
from stmem_jax.train.optim import from_config as optimizer


@dataclasses.dataclass(frozen=True)
class Setup:
    """A run's model and optimizer, its initial state (``init_state(*args)``: a classifier's takes the
    pre-trained encoder parameters or None) and its step (``step(state, *batch, key)``, the batch's
    entries named by ``inputs``), the micro-batches per step and the analytic FLOPs per example."""

    model: nn.Module
    tx: optax.GradientTransformation
    init_state: Callable[..., loop.TrainState]
    step: Callable
    inputs: tuple[str, ...]
    key: jax.Array
    accum_steps: int
    forward_flops: float


def scratch_classifier(config: ml_collections.ConfigDict, num_classes: int, lead_ids: Sequence[int]) -> nn.Module:
    """The classifier that ``model.kind`` (a method) fine-tunes, at random initialisation: the
    encoder the method would export from its model of ``config.model`` (preset and sizes, e.g. CPC's
    own), with a head and the run's dropout and drop-path (``config.resolve_recipe``'s)."""
    m = resolve_recipe(config).model
    method = methods.get(m.kind)
    encoder = method.classifier_model(method.model(config, lead_ids))
    fields = {"first_k_leads": m.first_k_leads} if "first_k_leads" in models.fields(type(encoder)) else {}
    return encoder.clone(num_classes=num_classes, drop_path=m.drop_path, dropout=m.dropout, **fields)


def for_mode(classifier: nn.Module, mode: str) -> nn.Module:
    """The classifier a downstream ``mode`` trains: for a linear probe (a frozen encoder) no dropout or
    drop path, and a deeper head's linear one."""
    if mode != "linprobe":
        return classifier
    return classifier.clone(drop_path=0.0, dropout=0.0,
                            **({"linear_head": True} if "linear_head" in models.fields(type(classifier)) else {}))


def build(config: ml_collections.ConfigDict, lead_ids: Sequence[int], schedule: loop.Schedule,
          devices: Sequence[jax.Device], *, classifier: nn.Module | None = None, multilabel: bool = False) -> Setup:
    """The pre-training set-up of ``config.method`` or, given ``classifier``, the set-up that trains it
    (``model.init_scheme``'s initialisation; ``train.layer_decay`` when ``config.mode`` is finetune;
    with linprobe only the head trains, the encoder frozen), for a global batch of
    ``schedule.global_batch`` inputs holding the leads ``lead_ids`` split over ``devices``.
    ``config`` is resolved first (``config.resolve_recipe``)."""
    config = resolve_recipe(config)
    lead_ids = tuple(lead_ids)
    init_key, step_key = jax.random.split(jax.random.key(config.train.seed))
    if classifier is None:
        method = methods.get(config.method)
        model = method.model(config, lead_ids)
        splittable, inputs = method.splittable, method.inputs

        def init_params(*_):
            return method.init_params(model, init_key, lead_ids)

        tx = optimizer(config.train, schedule.learning_rate, jax.eval_shape(init_params))
        frozen = method.frozen(model, jax.eval_shape(init_params))
        if frozen is not None:
            tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))

        def init_state(*_):
            params = init_params()
            return loop.TrainState.create(params, tx, method.init_extra(model, params))
    else:
        model, splittable, inputs = classifier, True, ("series", "label")
        example = jnp.zeros((1, len(lead_ids), model.seq_len), jnp.float32)

        def init_params(encoder: Any = None):
            params = model.init({"params": init_key, "dropout": init_key}, example, leads=lead_ids)["params"]
            if config.model.init_scheme == "pytorch":
                params = pytorch_defaults(params, init_key)
            return params if encoder is None else {**params, "encoder": encoder}

        layer_decay = config.train.layer_decay if config.get("mode") == "finetune" else 1.0
        frozen = ("encoder",) if config.get("mode") == "linprobe" else ()
        tx = optimizer(config.train, schedule.learning_rate, jax.eval_shape(init_params), layer_decay=layer_decay,
                       depth=model.depth, frozen=frozen)

        def init_state(encoder: Any = None):
            return loop.TrainState.create(init_params(encoder), tx)

    accum_steps = microbatch.count(schedule.global_batch, config.train.grad_accum_steps, devices,
                                   model.activation(len(lead_ids))) if splittable else \
        max(config.train.grad_accum_steps, 1)
    if classifier is None:
        step = steps.pretrain_step(method, model, tx, accum_steps, lead_ids, schedule.total_steps,
                                   config.data.get("lead_masking", 0.0),
                                   config.data.get("lead_masking_restandardize", False))
    else:
        step = steps.classifier_step(model, tx, multilabel, lead_ids, accum_steps, frozen=frozen)
    return Setup(model, tx, init_state, step, inputs, step_key, accum_steps, model.forward_flops(len(lead_ids)))
