"""The on-disk format of prepared ECG datasets, shared by ``data_prep`` (writer) and the input
pipeline (reader).

A prepared dataset is a directory holding, per split, TFRecord shards named
``<split>-NNNNN-of-MMMMM`` of serialised ``tf.train.Example``s (one per 10 s window, encoded as
TFDS's feature connectors encode them, so ``tfds.builder_from_directory`` reads them), TFDS's
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
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from stmem_jax.core import fileio
from stmem_jax.core.fileio import OutsideFolder, inside
from stmem_jax.core.recipe import Recipe

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
    """float signal -> (int16 array, scale) with ``signal ~= int16 * scale``; scale 1 for all-zero
    (or too small for a float32 scale). A NaN or infinite sample is a ValueError: the stored scale
    is always finite."""
    peak = float(np.max(np.abs(signal))) if signal.size else 0.0
    if not math.isfinite(peak):
        raise ValueError("a signal with NaN or infinite samples cannot be stored")
    scale = peak / INT16_MAX
    if not np.float32(scale) > 0:
        return np.zeros(np.shape(signal), np.int16), 1.0
    return np.round(signal / scale).astype(np.int16), np.float32(scale).item()


def dequantize(values: np.ndarray, scale: float) -> np.ndarray:
    return values.astype(np.float32) * np.float32(scale)


def make_example(signal: np.ndarray, *, record_id: str, patient_id: str, source: str, split: str,
                 window: int = 0, age: float = float("nan"), sex: str = "", fold: int = 0,
                 codes: Sequence[str] = (), code_weights: Sequence[float] | None = None,
                 labels: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """One example as a dict for :func:`serialize_example`; ``signal`` is float (leads, samples)."""
    values, scale = quantize(np.asarray(signal, np.float32))
    return {
        "signal": values, "scale": scale, "record_id": record_id, "patient_id": patient_id,
        "source": source, "split": split, "window": window, "age": age, "sex": sex, "fold": fold,
        "codes": list(codes), "code_weights": list(code_weights if code_weights is not None else [1.0] * len(codes)),
        "labels": {task: list(names) for task, names in (labels or {}).items()},
    }


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_FLOAT_FEATURES = ("scale", "age", "code_weights")
_INT_FEATURES = ("window", "fold")


def _feature(key: str, value: Any) -> bytes:
    """The ``tf.train.Feature`` of one key of our schema (scalars as one-element lists)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if key in _FLOAT_FEATURES:
        return _field(2, _field(1, np.asarray(values, "<f4").tobytes()))
    if key in _INT_FEATURES:
        return _field(3, _field(1, b"".join(_varint(int(v)) for v in values)))
    return _field(1, b"".join(_field(1, v.encode() if isinstance(v, str) else v) for v in values))


def serialize_example(example: Mapping[str, Any]) -> bytes:
    """One :func:`make_example` dict as a serialised ``tf.train.Example``, encoded as
    ``features_dict(...).serialize_example`` encodes it (equal once parsed) but without loading
    TensorFlow. ``labels`` becomes ``labels/<task>`` keys; the signal is raw little-endian int16 bytes."""
    flat = {key: value for key, value in example.items() if key not in ("labels", "signal")}
    flat.update({f"labels/{task}": names for task, names in example["labels"].items()})
    flat["signal"] = np.ascontiguousarray(example["signal"], "<i2").tobytes()
    entries = b"".join(_field(1, _field(1, key.encode()) + _field(2, _feature(key, flat[key]))) for key in sorted(flat))
    return _field(1, entries)


def _masked_crc(data: bytes) -> bytes:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15 | crc << 17) + 0xA282EAD8) & 0xFFFFFFFF).to_bytes(4, "little")


def write_shard(path: str | os.PathLike, serialized: Iterable[bytes]) -> tuple[int, int]:
    """Writes serialised examples to ``path`` as a TFRecord file, atomically (temporary name, then
    rename), without loading TensorFlow. Returns (examples, bytes)."""
    path = os.fspath(path)
    count = size = 0
    with fileio.open(path, "wb") as f:
        for record in serialized:
            length = len(record).to_bytes(8, "little")
            f.write(length + _masked_crc(length) + record + _masked_crc(record))
            count += 1
            size += 16 + len(record)
    return count, size


def count_records(path: str | os.PathLike) -> int:
    """The examples in a TFRecord file, from the record headers alone (a seek per record); a file
    that ends inside a record is a ValueError naming it."""
    path = os.fspath(path)
    size, offset, count = fileio.size(path), 0, 0
    with fileio.open(path, "rb") as f:
        while offset < size:
            header = f.read(12)
            length = int.from_bytes(header[:8], "little") if len(header) == 12 else -1
            offset += 16 + length
            if length < 0 or offset > size:
                raise ValueError(f"cannot read shard {path}: it ends inside example {count + 1}")
            f.seek(offset)
            count += 1
    return count


def read_records(path: str, expected: int | None = None) -> Iterator[bytes]:
    """The serialised examples of the TFRecord file at ``path`` (a local path or a URL), in order,
    with TFRecord's framing and checksums checked, without loading TensorFlow; a ValueError naming
    the file when it is damaged, ends inside a record, or holds other than ``expected`` examples."""
    count = 0
    with fileio.open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12 or _masked_crc(header[:8]) != header[8:]:
                raise ValueError(f"cannot read shard {path}: the header of example {count + 1} is damaged")
            length = int.from_bytes(header[:8], "little")
            record, crc = f.read(length), f.read(4)
            if len(record) < length or len(crc) < 4:
                raise ValueError(f"cannot read shard {path}: it ends inside example {count + 1}")
            if _masked_crc(record) != crc:
                raise ValueError(f"cannot read shard {path}: example {count + 1} fails its checksum")
            count += 1
            yield record
    if expected is not None and count != expected:
        raise ValueError(f"shard {path} holds {count} examples, the manifest says {expected}")


def write_tfds_metadata(directory: str | os.PathLike, features, shard_lengths: Mapping[str, Sequence[int]],
                        description: str = "", name: str | None = None) -> None:
    """Writes TFDS's metadata so ``tfds.builder_from_directory(directory)`` reads the shards; the
    dataset's ``name`` defaults to the folder's."""
    import tensorflow_datasets as tfds

    directory = os.fspath(directory)
    template = tfds.core.ShardedFileTemplate(data_dir=directory, template=SHARD_TEMPLATE,
                                             dataset_name=name or fileio.basename(directory)
                                             or "ecg", filetype_suffix="tfrecord")
    splits = []
    for split, lengths in shard_lengths.items():
        size = sum(fileio.size(fileio.join(directory, shard_name(split, i, len(lengths))))
                   for i in range(len(lengths)))
        splits.append(tfds.core.SplitInfo(name=split, shard_lengths=list(lengths), num_bytes=size,
                                          filename_template=template))
    tfds.folder_dataset.write_metadata(data_dir=directory, features=features, split_infos=splits,
                                       filename_template=template, description=description,
                                       check_data=False)


def shard_files(directory: str | os.PathLike, manifest: Mapping[str, Any], split: str) -> list[tuple[str, int]]:
    """``(path, examples)`` of each shard of ``split`` of a prepared folder, as its manifest lists them;
    a ValueError naming the manifest when the entry is malformed or a shard's name leads outside
    the folder."""
    directory = os.fspath(directory)
    where = fileio.join(directory, MANIFEST)
    entry = (manifest.get("splits") or {}).get(split)
    lengths = entry.get("shard_lengths") if isinstance(entry, dict) else None
    if not isinstance(lengths, list) or not all(type(n) is int and n >= 0 for n in lengths):
        raise ValueError(f"{where}: split {split!r} has no list of shard lengths")
    files = []
    for i, length in enumerate(lengths):
        name = shard_name(split, i, len(lengths))
        try:
            inside(directory, name)
        except OutsideFolder as error:
            raise ValueError(f"{where}: shard of split {split!r}: {error}") from None
        files.append((fileio.join(directory, name), length))
    return files


def check_scale(scale: float, shard: str, index: int) -> float:
    """``scale`` of example ``index`` of ``shard`` when finite, else a ValueError naming the shard."""
    if not math.isfinite(scale):
        raise ValueError(f"shard {shard}: example {index} has a non-finite scale ({scale}); the shard is damaged")
    return scale


def data_dirs(value: str | os.PathLike | Sequence[str]) -> tuple[str, ...]:
    """Prepared folders from a config value: one path, a comma-separated list or a sequence."""
    items = value.split(",") if isinstance(value, str) else [os.fspath(value)] if isinstance(value, os.PathLike) \
        else list(value)
    dirs = tuple(os.fspath(d).strip() for d in items)
    if not dirs or not all(dirs):
        raise ValueError(f"data.dir {value!r} names no folder (or an empty one in its list)")
    if len(set(dirs)) != len(dirs):
        raise ValueError(f"data.dir {value!r} names a folder twice")
    return dirs


# manifest fields that folders read together must share: (label, how to get it)
_SHARED = (("sampling rate (Hz)", lambda m: m["sampling_rate"]),
           ("window (samples)", lambda m: m["window_samples"]),
           ("filter", lambda m: None if not m.get("filter") else
            {k: m["filter"].get(k) for k in ("highpass_hz", "lowpass_hz", "order")}),
           ("resampling", lambda m: Recipe.of_manifest(m).resample),
           ("storage dtype", lambda m: (m.get("storage") or {}).get("dtype", "int16")))


def read_manifests(value: str | os.PathLike | Sequence[str]) -> dict[str, dict[str, Any]]:
    """The manifests of the folders :func:`data_dirs` names, in order; the folders must agree on
    sampling rate, window, filter, resampling and storage (the error names both folders and the field)."""
    manifests = {d: read_manifest(d) for d in data_dirs(value)}
    (first, reference), *others = manifests.items()
    for directory, manifest in others:
        for label, get in _SHARED:
            if get(manifest) != get(reference):
                raise ValueError(f"prepared folders {first} and {directory} disagree on the {label}: "
                                 f"{get(reference)} vs {get(manifest)}; prepare them with the same recipe")
    return manifests


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a prepared dataset, with a clear error naming it when there is none or it is
    unreadable."""
    path = fileio.join(os.fspath(directory), MANIFEST)
    if not fileio.isdir(os.fspath(directory)):
        raise FileNotFoundError(f"data directory {directory} does not exist")
    if not fileio.isfile(path):
        raise FileNotFoundError(f"{directory} is not a prepared dataset: {MANIFEST} is missing "
                                f"(write one with `stmem-prepare`)")
    try:
        manifest = json.loads(fileio.read_bytes(path))
    except ValueError as error:  # empty, truncated, random bytes
        raise ValueError(f"{path}: not a readable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("splits", {}), dict):
        raise ValueError(f"{path}: not a manifest (a JSON object with a 'splits' object)")
    return manifest
