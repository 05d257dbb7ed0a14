"""The on-disk format of prepared ECG datasets, shared by ``data_prep`` (writer) and the input
pipeline (reader).

A prepared dataset is a directory holding, per split, TFRecord shards named
``<split>-NNNNN-of-MMMMM`` of serialised ``tf.train.Example``s (one per 10 s window, encoded by
TFDS's feature connectors so ``tfds.builder_from_directory`` reads them), TFDS's
``dataset_info.json`` / ``features.json``, and ``manifest.json`` (see ``data_prep``).

Features of one example:
  signal      int16 (leads, samples), raw bytes; the signal in mV is ``signal * scale``
  scale       float32, mV per integer step (per example: max |x| maps to 32767)
  record_id   text; patient_id text; source text (e.g. ``ptbxl``, ``ningbo``); split text
  window      int32, index of the window within its record
  age         float32 (NaN when unknown); sex text (``M``, ``F`` or empty)
  fold        int32 (PTB-XL ``strat_fold``; 0 elsewhere)
  codes       the record's native label codes (SCP, SNOMED CT, CPSC class, ...), text list
  code_weights  float32 list parallel to ``codes`` (PTB-XL likelihoods / 100; 1 elsewhere)
  labels/<task> for every task of the dataset: its class names for this example, text list
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
INT16_MAX = 32767
SHARD_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}"


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}"


def features_dict(num_leads: int, window_samples: int, tasks: Sequence[str]):
    """The TFDS ``FeaturesDict`` of a dataset with these signal dimensions and label tasks."""
    import tensorflow_datasets as tfds

    text, seq = tfds.features.Text(), tfds.features.Sequence
    return tfds.features.FeaturesDict({
        "signal": tfds.features.Tensor(shape=(num_leads, window_samples), dtype=np.int16,
                                       encoding=tfds.features.Encoding.BYTES),
        "scale": np.float32,
        "record_id": text, "patient_id": text, "source": text, "split": text,
        "window": np.int32, "age": np.float32, "sex": text, "fold": np.int32,
        "codes": seq(text), "code_weights": seq(np.float32),
        "labels": {task: seq(text) for task in tasks},
    })


def quantize(signal: np.ndarray) -> tuple[np.ndarray, float]:
    """float signal -> (int16 array, scale) with ``signal ~= int16 * scale``; scale 1 for all-zero."""
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    scale = peak / INT16_MAX if peak > 0 else 1.0
    return np.round(signal / scale).astype(np.int16), np.float32(scale).item()


def dequantize(values: np.ndarray, scale: float) -> np.ndarray:
    return values.astype(np.float32) * np.float32(scale)


def make_example(signal: np.ndarray, *, record_id: str, patient_id: str, source: str, split: str,
                 window: int = 0, age: float = float("nan"), sex: str = "", fold: int = 0,
                 codes: Sequence[str] = (), code_weights: Sequence[float] | None = None,
                 labels: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """One example as a dict for ``features_dict(...).serialize_example``; ``signal`` is float (leads, samples)."""
    values, scale = quantize(np.asarray(signal, np.float32))
    return {
        "signal": values, "scale": scale, "record_id": record_id, "patient_id": patient_id,
        "source": source, "split": split, "window": window, "age": age, "sex": sex, "fold": fold,
        "codes": list(codes), "code_weights": list(code_weights if code_weights is not None else [1.0] * len(codes)),
        "labels": {task: list(names) for task, names in (labels or {}).items()},
    }


def write_shard(path: str | os.PathLike, serialized: Iterable[bytes]) -> tuple[int, int]:
    """Writes serialised examples to ``path`` atomically (temporary name, then rename).
    Returns (examples, bytes)."""
    import tensorflow as tf

    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in serialized:
            writer.write(record)
            count += 1
    os.replace(tmp, path)
    return count, os.path.getsize(path)


def write_tfds_metadata(directory: str | os.PathLike, features, shard_lengths: Mapping[str, Sequence[int]],
                        description: str = "") -> None:
    """Writes TFDS's metadata so ``tfds.builder_from_directory(directory)`` reads the shards."""
    import tensorflow_datasets as tfds

    directory = os.fspath(directory)
    template = tfds.core.ShardedFileTemplate(data_dir=directory, template=SHARD_TEMPLATE,
                                             dataset_name=os.path.basename(os.path.normpath(directory)) or "ecg",
                                             filetype_suffix="tfrecord")
    splits = []
    for split, lengths in shard_lengths.items():
        size = sum(os.path.getsize(os.path.join(directory, shard_name(split, i, len(lengths))))
                   for i in range(len(lengths)))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=size,
                                          filename_template=template))
    tfds.folder_dataset.write_metadata(data_dir=directory, features=features, split_infos=splits,
                                       filename_template=template, description=description,
                                       check_data=False)


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared dataset, with a clear error when there is none."""
    path = os.path.join(os.fspath(directory), MANIFEST)
    if not os.path.isdir(os.fspath(directory)):
        raise FileNotFoundError(f"data directory {directory} does not exist")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a prepared dataset: {MANIFEST} is missing "
                                f"(write one with `stmem-prepare`)")
    with open(path) as f:
        return json.load(f)
