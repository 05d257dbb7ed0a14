"""Writes small prepared datasets (shards, TFDS metadata, manifest) for tests and benchmarks.

Signals are deterministic sums of sines plus noise; for the first single-label task the
dominant frequency depends on the class, so a model can learn it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from stmem_jax.core import shards as fmt
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.recipe import RECIPES

DEFAULT_TASKS = {
    "superdiagnostic": {"classes": ["CD", "HYP", "MI", "NORM", "STTC"], "multilabel": True},
    "rhythm": {"classes": ["AFIB", "SBRAD", "SR"], "multilabel": False},
}
DEFAULT_SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def write_dataset(directory: str | os.PathLike, *, num_records: int = 40, num_leads: int = 12,
                  tasks: Mapping[str, Mapping] | None = None, splits: Mapping[str, float] | None = None,
                  seed: int = 0, window_samples: int = 2500, sampling_rate: int = 250,
                  windows_per_record: int = 1, shards_per_split: int = 2, filtered: bool = True,
                  unlabeled_every: int = 0, leads: Sequence[str] | None = None, source: str = "synthetic",
                  recipe: str = "") -> str:
    """Writes a prepared dataset into ``directory`` and returns its path.

    Its manifest says it was prepared as stmem-prepare's recipe ``recipe`` prepares (``authors``:
    unfiltered, FFT resampling, flat-lead records kept; the signals then carry a baseline wander), or,
    empty, as manifests before the recipe was recorded (stmem-jax's, ``filtered`` or not).

    ``tasks`` maps task name -> {"classes": [...], "multilabel": bool} (default: a multi-label and a
    single-label task; ``{}`` for a pre-training dataset). ``splits`` maps split name -> fraction of
    the records (the last split takes the rest). ``unlabeled_every=k`` gives every k-th record no
    class for single-label tasks and two classes to the record after it (both must be dropped).
    """
    tasks = dict(DEFAULT_TASKS if tasks is None else tasks)
    splits = dict(DEFAULT_SPLITS if splits is None else splits)
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    leads = list(LEAD_NAMES[:num_leads] if leads is None else leads)
    num_leads = len(leads)
    names = list(splits)
    counts = [int(round(num_records * splits[s])) for s in names[:-1]]
    counts.append(num_records - sum(counts))
    t = np.arange(window_samples) / sampling_rate
    record, shard_lengths, split_info = 0, {}, {}
    for split, count in zip(names, counts):
        examples, classes = [], {task: Counter() for task in tasks}
        for _ in range(count):
            labels = _labels(rng, tasks, record, unlabeled_every)
            for task, names_ in labels.items():
                classes[task].update(names_)
            freq = 1.0 + _first_single_label_index(tasks, labels)
            for window in range(windows_per_record):
                phase = rng.uniform(0, 2 * np.pi, (num_leads, 1))
                signal = (np.sin(2 * np.pi * freq * t + phase) + 0.3 * np.sin(2 * np.pi * 7.0 * t)
                          + 0.1 * rng.standard_normal((num_leads, window_samples)))
                if not filtered or recipe == "authors":
                    signal = signal + 0.5 * np.sin(2 * np.pi * 0.2 * t) + 0.2
                examples.append(fmt.serialize_example(fmt.make_example(
                    signal, record_id=f"rec{record:05d}", patient_id=f"pat{record // 2:05d}", source=source,
                    split=split, window=window, age=float(20 + record % 60), sex="MF"[record % 2],
                    fold=record % 10 + 1, codes=[f"code{record % 4}"], labels=labels)))
            record += 1
        shards = max(1, min(shards_per_split, len(examples)))
        bounds = np.linspace(0, len(examples), shards + 1).astype(int)
        shard_lengths[split] = []
        for i in range(shards):
            n, _ = fmt.write_shard(os.path.join(directory, fmt.shard_name(split, i, shards)),
                                   examples[bounds[i]:bounds[i + 1]])
            shard_lengths[split].append(n)
        split_info[split] = {"examples": len(examples), "records": count, "shard_lengths": shard_lengths[split],
                             "classes": {task: dict(sorted(c.items())) for task, c in sorted(classes.items())}}
    fmt.write_tfds_metadata(directory, fmt.features_dict(num_leads, window_samples, sorted(tasks)), shard_lengths, description="synthetic test dataset")
    manifest = {
        "format_version": 1, "tool": "tests.data_fixtures", "source": source, "leads": leads,
        "sampling_rate": sampling_rate, "window_samples": window_samples,
        "window_s": window_samples / sampling_rate,
        "filter": {"highpass_hz": 0.67, "lowpass_hz": 40.0, "order": 5} if filtered else None,
        "tasks": tasks, "splits": split_info, "storage": {"dtype": "int16"}, "inputs": {}, "skipped": [],
        "args": {"seed": seed},
    }
    if recipe:
        prepared = dataclasses.replace(RECIPES[recipe], fs=sampling_rate, window_s=window_samples / sampling_rate)
        manifest.update(recipe=prepared.to_dict(), filter=prepared.filter_settings())
    with open(os.path.join(directory, fmt.MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    return directory


def _labels(rng, tasks: Mapping[str, Mapping], record: int, unlabeled_every: int) -> dict[str, list[str]]:
    labels = {}
    for task, spec in sorted(tasks.items()):
        classes: Sequence[str] = spec["classes"]
        if spec["multilabel"]:
            k = int(rng.integers(1, min(3, len(classes)) + 1))
            labels[task] = [str(c) for c in rng.choice(classes, size=k, replace=False)]
        elif unlabeled_every and record % unlabeled_every == 0:
            labels[task] = []
        elif unlabeled_every and record % unlabeled_every == 1:
            labels[task] = list(classes[:2])
        else:
            labels[task] = [classes[record % len(classes)]]
    return labels


def _first_single_label_index(tasks: Mapping[str, Mapping], labels: Mapping[str, list[str]]) -> int:
    for task, spec in sorted(tasks.items()):
        if not spec["multilabel"] and len(labels[task]) == 1:
            return list(spec["classes"]).index(labels[task][0])
    return 0


def read_split(directory, split):
    """Every example of a split through TFDS, signals in mV."""
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(directory))
    out = []
    for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
        ex = dict(ex)
        ex["mv"] = ex["signal"].astype(np.float32) * ex["scale"]
        out.append(ex)
    return out
