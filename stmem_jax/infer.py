"""Inference: any model from any path, and its outputs over crops, batches and prepared splits.

The one path from saved weights to predictions and features, used by the trainers' evaluation,
``api``, ``stmem-embed``, the evaluation grid and the demo. It imports no trainer.

A model path is a saved model directory (``model.json`` + orbax variables), a directory holding
one (a stmem-pretrain workdir: ``encoder/``, ``model/``; a downstream run: ``model/``), or a public
PyTorch ``.pth`` file; the model may be a pre-training model, an encoder or a classifier.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils

from stmem_jax import mesh as meshlib
from stmem_jax import models
from stmem_jax.convert import load_torch_checkpoint
from stmem_jax.data.pipeline import InputConfig, global_batches
from stmem_jax.model_dir import MODEL_FILE, load_model


def load(path: str, prefer: Sequence[str] = ("encoder", "model")) -> tuple[nn.Module, dict[str, Any]]:
    """The model and variables at ``path``: a ``.pth`` file, a saved model directory, or a directory
    holding one in a sub-directory named in ``prefer`` (the first found)."""
    if os.path.isfile(path):
        return load_torch_checkpoint(path)
    for candidate in (path, *(os.path.join(path, name) for name in prefer)):
        if os.path.isfile(os.path.join(candidate, MODEL_FILE)):
            return load_model(candidate)
    raise FileNotFoundError(f"{path} holds no saved model ({MODEL_FILE} neither there nor in "
                            f"{' or '.join(name + '/' for name in prefer)}) and is not a .pth file")


def load_encoder(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder (no head) of the weights at ``path``, whatever model they hold."""
    return models.classification_encoder(*load(path, ("encoder", "model")))


def load_pretraining_model(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The whole pre-training model (encoder and decoder) at ``path``."""
    model, variables = load(path, ("model",))
    if not models.is_pretraining(model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a pre-training model (it has no decoder)")
    return model, variables


def crop_outputs(model: nn.Module, params: Any, series: jax.Array, lead_ids: tuple[int, ...]) -> jax.Array:
    """The model on every crop of (B, crops, C, T): (B, crops, K) logits, or features without a head."""
    batch, crops = series.shape[:2]
    out = model.apply({"params": params}, series.reshape(batch * crops, *series.shape[2:]), leads=lead_ids)
    return out.reshape(batch, crops, -1)


def crop_probabilities(logits: jax.Array, multilabel: bool) -> jax.Array:
    """(B, crops, K) logits -> (B, K) class probabilities averaged over the crops."""
    logits = logits.astype(jax.numpy.float32)
    return (jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)).mean(axis=1)


def probabilities_fn(model: nn.Module, lead_ids: tuple[int, ...], multilabel: bool) -> Callable:
    """Jitted ``(params, (B, crops, C, T)) -> (B, K)``: class probabilities averaged over the crops."""
    return jax.jit(lambda p, s: crop_probabilities(crop_outputs(model, p, s, lead_ids), multilabel))


def features_fn(encoder: nn.Module, lead_ids: tuple[int, ...]) -> Callable:
    """Jitted ``(params, (B, crops, C, T)) -> (B, W)``: pooled features averaged over the crops."""
    encoder = encoder.clone(num_classes=0)
    return jax.jit(lambda p, s: crop_outputs(encoder, p, s, lead_ids).mean(axis=1))


def map_batches(fn: Callable, params: Any, examples: Iterable[np.ndarray], batch_size: int) -> np.ndarray:
    """``fn(params, batch)`` over examples grouped into batches of ``batch_size`` (the last one padded,
    so one compilation serves all), on this process's default device; outputs concatenated."""
    outputs, pending = [], []

    def flush():
        x = np.stack(pending)
        padded = np.concatenate([x, np.zeros((batch_size - len(x), *x.shape[1:]), x.dtype)])
        outputs.append(np.asarray(fn(params, padded))[:len(x)])
        pending.clear()

    for example in examples:
        pending.append(example)
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    if not outputs:
        raise ValueError("no examples to run the model on")
    return np.concatenate(outputs)


def _gather_strings(values: np.ndarray) -> np.ndarray:
    """This host's byte strings (at most 256 long) concatenated over the processes, in process order."""
    if jax.process_count() == 1:
        return values
    fixed = np.asarray(values, dtype="S256")
    rows = multihost_utils.process_allgather(fixed.view(np.uint8).reshape(len(fixed), 256), tiled=True)
    return np.ascontiguousarray(rows).view("S256").ravel()


def predict(fn: Callable, params: Any, input_config: InputConfig, mesh) -> dict[str, np.ndarray]:
    """``fn(params, series)`` over an evaluation split, gathered from every device and process:
    ``outputs``, ``record_id`` (str), ``window``, ``source`` (index into the folders read) and (with a
    task) ``label``, each valid example
    exactly once (in shard order per process, processes in turn)."""
    parts: dict[str, list] = {}
    for batch in global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES):
        device = {"outputs": fn(params, batch["series"]), "valid": batch["valid"], "window": batch["window"],
                  "source": batch["source"]}
        if "label" in batch:
            device["label"] = batch["label"]
        for k, v in multihost_utils.process_allgather(device, tiled=True).items():
            parts.setdefault(k, []).append(np.asarray(v))
        parts.setdefault("record_id", []).append(_gather_strings(batch["record_id"]))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    valid = out.pop("valid")
    out = {k: v[valid] for k, v in out.items()}
    out["record_id"] = np.array([r.decode() for r in out["record_id"]])
    return out
