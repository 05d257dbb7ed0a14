"""What the downstream trainers (end to end and linear probe) share: the validation metrics, the
model-selection score, the training examples and the run's checkpoints (the loss is in
``stmem_jax.train.steps``)."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from stmem_jax import metrics as metrics_lib
from stmem_jax.data.pipeline import InputConfig, steps_per_epoch
from stmem_jax.data.tasks import Task
from stmem_jax.train import loop
from stmem_jax.train.checkpoints import Checkpoints


def validation(task: Task, predictions: dict) -> dict:
    """Classification metrics of predictions (``outputs`` probabilities, ``label``)."""
    return metrics_lib.classification_metrics(predictions["label"], predictions["outputs"], task.multilabel,
                                              task.classes)


def score(config: ml_collections.ConfigDict, val: dict) -> float:
    """Lower is better: the validation loss or minus its macro AUROC."""
    return val["loss"] if config.eval.select == "loss" else -val["auroc"]


def scalars_of(result: dict) -> dict[str, float]:
    return {k: v for k, v in result.items() if isinstance(v, float)}


def eval_interval(config: ml_collections.ConfigDict, schedule: loop.Schedule) -> int:
    """``eval.every_steps``, or every epoch but at most ``eval.max_evals`` times."""
    return config.eval.every_steps or max(schedule.steps_per_epoch,
                                          math.ceil(schedule.total_steps / config.eval.max_evals))


def num_examples(input_config: InputConfig) -> int:
    """Examples of the split that the input reads (after the label fraction), without reading them."""
    return steps_per_epoch(dataclasses.replace(input_config, training=False, batch_size=1), process_count=1)


def checkpoints_for(config: ml_collections.ConfigDict, workdir: str, has_val: bool) -> Checkpoints:
    """The run's checkpoints, keeping the best validated state when there is a validation split."""
    return Checkpoints(workdir, config.checkpoint.keep, asynchronous=config.checkpoint.asynchronous,
                       best_metric="val_score" if has_val else None)
