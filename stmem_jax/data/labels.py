"""Host-side label pass over a split: class names per example, label encodings and the seeded,
stratified label-fraction subsets."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from stmem_jax.core import fileio
from stmem_jax.data.records import record_dataset

_CACHE: dict[tuple, tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]] = {}


def read_labels(path: str, task: str, spec: Mapping[str, tf.io.FixedLenSequenceFeature]
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, ...]]]:
    """(record ids, window indices, class names of ``task`` per example) of one shard, in file
    order; cached per file version. Errors name the file."""
    key = (path, task, *fileio.version(path))
    if key not in _CACHE:
        record_ids, windows, names = [], [], []
        try:
            for batch in (record_dataset(path).batch(1024)
                          .map(lambda s: tf.io.parse_example(s, spec)).as_numpy_iterator()):
                record_ids.extend(r.decode() for r in batch["record_id"])
                windows.extend(batch["window"].tolist())
                names.extend(tuple(n.decode() for n in row if n) for row in batch[f"labels/{task}"])
        except tf.errors.OpError as e:
            raise ValueError(f"cannot read shard {path}: {e.message}") from None
        _CACHE[key] = (np.array(record_ids, dtype=object), np.array(windows, np.int32), names)
    return _CACHE[key]


def encode(names: Sequence[tuple[str, ...]], classes: Sequence[str], multilabel: bool,
           record_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, usable): class index int32 (N,) for single-label tasks, where only examples with
    exactly one class are usable (-1 elsewhere); multi-hot float32 (N, K) for multi-label tasks, where
    examples with no class are not usable (the PTB-XL benchmark drops them per task)."""
    index = {c: i for i, c in enumerate(classes)}
    for rid, row in zip(record_ids, names):
        unknown = [n for n in row if n not in index]
        if unknown:
            raise ValueError(f"record {rid} has class(es) {unknown} that the manifest does not list {list(classes)}")
    if multilabel:
        labels = np.zeros((len(names), len(classes)), np.float32)
        for i, row in enumerate(names):
            labels[i, [index[n] for n in row]] = 1.0
        return labels, labels.any(axis=1)
    usable = np.array([len(row) == 1 for row in names], bool)
    return np.array([index[row[0]] if len(row) == 1 else -1 for row in names], np.int32), usable


def stratified_subset(record_ids: Sequence[str], names: Sequence[tuple[str, ...]], usable: np.ndarray,
                      fraction: float, seed: int) -> np.ndarray:
    """Bool mask over examples: a ``fraction`` of the usable records (all windows of a chosen record),
    drawn per stratum (the record's first class; none for an empty list) with at least one record
    per stratum, plus one record for any class the draw missed. Depends only on the labels and seed."""
    stratum: dict[str, str] = {}
    classes_of: dict[str, set[str]] = defaultdict(set)
    for rid, row, ok in zip(record_ids, names, usable):
        if ok:
            stratum.setdefault(rid, row[0] if row else "")
            classes_of[rid].update(row)
    groups = defaultdict(list)
    for rid, s in stratum.items():
        groups[s].append(rid)
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for s in sorted(groups):
        rids = sorted(groups[s])
        k = max(1, int(round(fraction * len(rids))))
        chosen.update(rids[i] for i in rng.permutation(len(rids))[:k])
    covered = set().union(*(classes_of[r] for r in chosen))
    for c in sorted(set().union(*classes_of.values()) - covered):
        candidates = sorted(r for r, cs in classes_of.items() if c in cs)
        chosen.add(candidates[rng.integers(len(candidates))])
    return np.array([bool(ok) and rid in chosen for rid, ok in zip(record_ids, usable)])
