"""What the downstream trainers (end to end and linear probe) share: the validation metrics, the
model-selection score, the training examples and the run's checkpoints (the loss is in
``stmem_jax.train.steps``)."""

from __future__ import annotations

import dataclasses
import math

import ml_collections
import numpy as np

from stmem_jax import metrics as metrics_lib
from stmem_jax.data.pipeline import InputConfig, steps_per_epoch
from stmem_jax.data.tasks import Task
from stmem_jax.train import loop
from stmem_jax.train.checkpoints import Checkpoints


def crop_predictions(predictions: dict, multilabel: bool) -> dict:
    """Predictions whose ``outputs`` are crop logits (N, crops, K) -> ``outputs`` the crops' mean class
    probabilities (softmax, or sigmoid for multi-label; what test metrics use) and ``mean_logits``."""
    logits = np.asarray(predictions["outputs"], np.float64)
    probs = 1 / (1 + np.exp(-logits)) if multilabel else np.exp(logits - logits.max(-1, keepdims=True))
    if not multilabel:
        probs /= probs.sum(-1, keepdims=True)
    return {**predictions, "outputs": probs.mean(axis=1), "mean_logits": logits.mean(axis=1)}


def validation(config: ml_collections.ConfigDict, task: Task, predictions: dict) -> dict:
    """Classification metrics of :func:`crop_predictions` (``outputs`` probabilities, ``label``), the
    loss as ``eval.selection_loss`` says: the cross-entropy of the crops' mean logits
    (``mean_logits``) or of their mean probabilities (``mean_probabilities``)."""
    logits = predictions["mean_logits"] if config.eval.selection_loss == "mean_logits" else None
    return metrics_lib.classification_metrics(predictions["label"], predictions["outputs"], task.multilabel,
                                              task.classes, logits)


def score(config: ml_collections.ConfigDict, val: dict) -> float:
    """Lower is better: the validation loss or minus its macro AUROC."""
    return val["loss"] if config.eval.select == "loss" else -val["auroc"]


def scalars_of(result: dict) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, float)}


def eval_interval(config: ml_collections.ConfigDict, schedule: loop.Schedule) -> int:
    """``eval.every_steps``, or every epoch (at most ``eval.max_evals`` times unless it is 0)."""
    if config.eval.every_steps:
        return config.eval.every_steps
    if not config.eval.max_evals:
        return schedule.steps_per_epoch
    return max(schedule.steps_per_epoch, math.ceil(schedule.total_steps / config.eval.max_evals))


def num_examples(input_config: InputConfig) -> int:
    """Examples of the split that the input reads (after the label fraction), without reading them."""
    return steps_per_epoch(dataclasses.replace(input_config, training=False, batch_size=1), process_count=1)


def checkpoints_for(config: ml_collections.ConfigDict, workdir: str, has_val: bool) -> Checkpoints:
    """The run's checkpoints, keeping the best validated state when there is a validation split."""
    return Checkpoints(workdir, config.checkpoint.keep, asynchronous=config.checkpoint.asynchronous,
                       best_metric="val_score" if has_val else None)
