"""Inference: any model from any path, and its outputs over crops, batches, prepared splits and
folders of ECG files.

The one path from saved weights to predictions and features, used by the trainers' evaluation,
``api``, ``stmem-embed``, ``stmem-predict``, the evaluation grid and the demo. It imports no trainer.

A model path is a saved model directory (``model.json`` + orbax variables), a directory holding
one (a stmem-pretrain workdir: ``encoder/``, ``model/``; a downstream run: ``model/``), or a public
PyTorch ``.pth`` file; the model may be a pre-training model, an encoder or a classifier.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from stmem_jax import mesh as meshlib
from stmem_jax import methods, microbatch, models
from stmem_jax.convert import load_torch_checkpoint
from stmem_jax.core import fileio
from stmem_jax.core.ecgfile import list_files, read_ecg
from stmem_jax.core.leads import LEAD_NAMES, lead_indices
from stmem_jax.core.recipe import Recipe, authors_for, window_inputs
from stmem_jax.core.shards import read_manifests
from stmem_jax.core.signal import RecordError
from stmem_jax.model_dir import MODEL_FILE, load_model, read_description

if TYPE_CHECKING:  # the input pipeline (TensorFlow) loads only when a prepared split is read
    from stmem_jax.data.pipeline import InputConfig


def model_directory(path: str, prefer: Sequence[str] = ("encoder", "model")) -> str:
    """The saved model directory at ``path``, or in its sub-directory named in ``prefer`` (the first found)."""
    for candidate in (path, *(fileio.join(path, name) for name in prefer)):
        if fileio.isfile(fileio.join(candidate, MODEL_FILE)):
            return candidate
    raise FileNotFoundError(f"{path} holds no saved model ({MODEL_FILE} neither there nor in "
                            f"{' or '.join(name + '/' for name in prefer)}) and is not a .pth file")


def load(path: str, prefer: Sequence[str] = ("encoder", "model")) -> tuple[nn.Module, dict[str, Any]]:
    """The model and variables at ``path``: a ``.pth`` file, a saved model directory, or a directory
    holding one in a sub-directory named in ``prefer`` (the first found)."""
    if fileio.isfile(path):
        return load_torch_checkpoint(path)
    return load_model(model_directory(path, prefer))


def load_encoder(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder (no head) of the weights at ``path``, whatever model they hold."""
    try:
        return methods.classification_encoder(*load(path, ("encoder", "model")))
    except ValueError as error:
        message = str(error)
        raise ValueError(message if path in message else f"{path}: {message}") from None


def input_recipe(path: str, model: nn.Module | None = None, prefer: Sequence[str] = ("encoder", "model")) -> Recipe:
    """The input the model at ``path`` (as :func:`load` finds it; ``model``: that model, if loaded) was
    trained on, to feed it exactly that: ``metadata.recipe`` of its ``model.json`` (``Recipe.to_dict()``).
    Keys missing there (an older version wrote it) take the field's default, the behaviour of the
    versions without the field; keys this version does not know (a newer one wrote it) are refused,
    as is a crop length other than the model's. A public ``.pth`` (the authors' code trained it): the
    authors' recipe at the model's crop length. An export from before recipes were saved: stmem-jax's
    recipe (then the only one) at the model's crop length, at ``data.sample_rate`` when the saved
    pre-training config set one."""
    if fileio.isfile(path):
        return authors_for(model or load_torch_checkpoint(path)[0])
    directory = model_directory(path, prefer)
    file = fileio.join(directory, MODEL_FILE)
    described, _, metadata = read_description(directory)
    seq_len = (model or described).seq_len
    saved = metadata.get("recipe")
    if saved is None:
        data = (metadata.get("config") or {}).get("data") or {}
        return Recipe(fs=int(data.get("sample_rate") or Recipe.fs), crop_samples=seq_len)
    known = {field.name for field in dataclasses.fields(Recipe)}
    unknown = sorted(set(saved) - known) if isinstance(saved, dict) else []
    if unknown:
        raise ValueError(f"{file}: metadata.recipe has field(s) {', '.join(unknown)} that this version of stmem-jax "
                         f"does not know (a newer version saved the model): upgrade to feed it the input it was "
                         f"trained on")
    try:
        recipe = Recipe(**saved)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{file}: metadata.recipe is not a recipe ({error})") from None
    if recipe.crop_samples != seq_len:
        raise ValueError(f"{file}: metadata.recipe has {recipe.crop_samples}-sample crops; the model takes {seq_len}")
    return recipe


def checksum(path: str, prefer: Sequence[str] = ("encoder", "model"), *, weights: bool = True) -> str:
    """A SHA-256 (16 hex digits) of the model at ``path`` as :func:`load` finds it: its description
    and, with ``weights``, every array (path, dtype, shape and bytes). Another file holding the same
    model gives the same checksum; any changed weight changes it."""
    model, variables = load(path, prefer)
    digest = hashlib.sha256(json.dumps(models.model_config(model), sort_keys=True).encode())
    for key, leaf in jax.tree_util.tree_flatten_with_path(variables)[0] if weights else ():
        array = np.ascontiguousarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(key)} {array.dtype} {array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def split_input(data_dir: str, split: str, recipe: Recipe, leads, batch_size: int, task: str | None = None
                ) -> InputConfig:
    """The evaluation input of a prepared split that shows a model the input of ``recipe``: its crops
    and evaluation crops, its filter placement, the windows resampled to its rate in the pipeline
    (with its resampling) where the data's differs. A folder prepared under the other recipe still
    serves, with a printed note: the model's band filter where the folder has none (each stored
    window, the closest to a record filtered at preparation), none in the pipeline where the folder
    was filtered at preparation; its windows as they were resampled. An error naming the folder when
    the data's window or band filter cannot give the model's input."""
    from stmem_jax.data.pipeline import InputConfig, model_recipe  # TensorFlow: only to read a split

    manifests = read_manifests(data_dir)
    stored = {directory: Recipe.of_manifest(manifest) for directory, manifest in manifests.items()}
    for directory, data in stored.items():
        if data.window_s != recipe.window_s:
            raise ValueError(f"{directory} holds {data.window_s:g} s windows; the model was trained on "
                             f"{recipe.window_s:g} s windows")
    rates = {data.fs for data in stored.values()}
    filter_on, prefiltered = recipe.filter_on, {data.prefiltered for data in stored.values()}
    if prefiltered == {True} and filter_on != "record":
        filter_on = "record"
    elif prefiltered == {False} and filter_on == "record":
        filter_on = "window"
    differs = sorted({f"{directory} ({data.name})" for directory, data in stored.items()
                      if (data.prefiltered, data.resample) != (recipe.prefiltered, recipe.resample)})
    if differs:
        print(f"note: prepared otherwise than the model's input ({recipe.name} recipe: "
              f"{'band filter at preparation' if recipe.prefiltered else 'no filter at preparation'}, "
              f"{recipe.resample} resampling): {', '.join(differs)}; the pipeline filters "
              f"{ {'record': 'nothing', 'window': 'each stored window', 'crop': 'each crop'}[filter_on] }",
              flush=True)
    input_config = InputConfig(data_dir=data_dir, split=split, batch_size=batch_size, training=False, leads=leads,
                               task=task, crop_samples=recipe.crop_samples, eval_crops=recipe.eval_crops,
                               filter=filter_on, sample_rate=0 if rates == {recipe.fs} else recipe.fs,
                               resample="" if rates == {recipe.fs} else recipe.resample)
    wanted = (recipe.highpass_hz, recipe.lowpass_hz, recipe.filter_order)
    for directory in manifests:
        seen = model_recipe(dataclasses.replace(input_config, data_dir=directory))
        band = (seen.highpass_hz, seen.lowpass_hz, seen.filter_order)
        if band != wanted:
            raise ValueError(f"{directory} gives the band filter (high-pass, low-pass, order) {band}; the model was "
                             f"trained with {wanted}")
    return input_config


def load_pretraining_model(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """The whole pre-training model (encoder and decoder) at ``path``."""
    model, variables = load(path, ("model",))
    if not methods.is_pretraining(model):
        raise ValueError(f"{path} holds a {type(model).__name__}, not a pre-training model (it has no decoder)")
    return model, variables


def crop_outputs(model: nn.Module, params: Any, series: jax.Array, lead_ids: tuple[int, ...]) -> jax.Array:
    """The model on every crop of (B, crops, C, T): (B, crops, K) logits, or features without a head
    (in micro-batches on CPU, ``stmem_jax.microbatch``)."""
    batch, crops = series.shape[:2]
    flat = series.reshape(batch * crops, *series.shape[2:])
    k = microbatch.count(len(flat), per_example=model.activation(len(lead_ids)))
    out = microbatch.apply(lambda x: model.apply({"params": params}, x, leads=lead_ids), flat, k)
    return out.reshape(batch, crops, -1)


def crop_probabilities(logits: jax.Array, multilabel: bool) -> jax.Array:
    """(B, crops, K) logits -> (B, K) class probabilities averaged over the crops."""
    logits = logits.astype(jax.numpy.float32)
    return (jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)).mean(axis=1)


def outputs_fn(model: nn.Module, lead_ids: tuple[int, ...]) -> Callable:
    """Jitted ``(params, (B, crops, C, T)) -> (B, crops, K)``: :func:`crop_outputs`."""
    return jax.jit(lambda p, s: crop_outputs(model, p, s, lead_ids))


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


def file_outputs(fn: Callable, params: Any, folder: str, leads: str | Sequence[str], recipe: Recipe, *,
                 crop_samples: int, per_window: bool = False, batch_size: int = 64, pattern: str | None = None,
                 progress: bool = True) -> tuple[dict[str, np.ndarray], list[tuple[str, str]]]:
    """``fn(params, crops)`` over the ECG files under ``folder`` (any format ``core.ecgfile`` reads),
    each cut as stmem-prepare cuts it (``recipe``), its first usable window or every window:
    ``outputs``, ``record_id`` (the path relative to ``folder``) and ``window``; and the files left
    out with their reasons (also printed)."""
    wanted = [LEAD_NAMES[i] for i in lead_indices(leads)]
    ids, index, skipped = [], [], []

    def examples():
        for relpath in tqdm(list_files(folder, pattern), unit="file", desc=f"reading {folder}", disable=not progress):
            try:
                ecg = read_ecg(fileio.join(folder, relpath), relpath)
                windows = window_inputs(ecg.as_signal(), wanted, recipe, crop_samples=crop_samples,
                                        per_window=per_window)
            except RecordError as error:
                skipped.append((relpath, getattr(error, "reason", str(error))))
                print(f"skipped {relpath}: {skipped[-1][1]}", file=sys.stderr)
                continue
            for window, x in windows:
                ids.append(relpath)
                index.append(window)
                yield x

    batches = examples()
    first = next(batches, None)
    if first is None:
        raise ValueError(f"no usable ECG file under {folder} ({len(skipped)} left out)")
    outputs = map_batches(fn, params, itertools.chain([first], batches), batch_size)
    return {"outputs": outputs, "record_id": np.array(ids), "window": np.array(index, np.int32)}, skipped


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
    exactly once (in shard order per process, processes in turn). A pass of more than 5 s shows its
    progress (rate, ETA) on stderr."""
    from stmem_jax.data.pipeline import global_batches, steps_per_epoch

    parts: dict[str, list] = {}
    batches = tqdm(global_batches(input_config, mesh, data_axis=meshlib.BATCH_AXES),
                   total=steps_per_epoch(input_config), desc=f"evaluating {input_config.split}", unit="batch", delay=5, mininterval=10,
                   disable=jax.process_index() != 0)
    for batch in batches:
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
