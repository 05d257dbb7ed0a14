"""A labelled task of a prepared dataset: its classes, the lead selection and the input configs of
its splits."""

from __future__ import annotations

import dataclasses

import ml_collections

from stmem_jax.core.leads import parse_leads
from stmem_jax.core.shards import read_manifest
from stmem_jax.data.pipeline import InputConfig, lead_indices_for


@dataclasses.dataclass
class Task:
    """What a run learns: the task, its classes and the resolved data settings."""

    data_dir: str
    name: str
    classes: list[str]
    multilabel: bool
    leads: str | tuple[str, ...]
    lead_ids: tuple[int, ...]

    def input(self, config: ml_collections.ConfigDict, split: str, training: bool, batch_size: int,
              label_fraction: float = 1.0) -> InputConfig:
        """The input config of ``split`` with a downstream config's data settings."""
        d = config.data
        return InputConfig(data_dir=self.data_dir, split=split, batch_size=batch_size, training=training,
                           leads=self.leads, crop_samples=d.crop_samples, task=self.name,
                           label_fraction=label_fraction, augment=training and d.augment, bandpass=d.bandpass,
                           seed=config.train.seed, shuffle_buffer=d.shuffle_buffer, eval_crops=config.eval.crops)


def resolve_task(data_dir: str, name: str, leads: str) -> Task:
    """The task ``name`` of a prepared dataset (empty: its only task) with ``leads`` (a lead setting or
    comma-separated names); errors name the dataset and what it has."""
    manifest = read_manifest(data_dir)
    tasks = manifest.get("tasks") or {}
    if not name:
        if len(tasks) != 1:
            raise ValueError(f"{data_dir} has the tasks {sorted(tasks) or 'none'}: choose one with data.task")
        (name,) = tasks
    if name not in tasks:
        raise ValueError(f"task {name!r} not in {data_dir} (it has: {', '.join(sorted(tasks)) or 'none'})")
    classes = list(tasks[name]["classes"])
    if not classes:
        raise ValueError(f"task {name!r} of {data_dir} has no classes")
    selection = parse_leads(leads)
    lead_ids = lead_indices_for(InputConfig(data_dir=data_dir, leads=selection), manifest)
    return Task(data_dir, name, classes, bool(tasks[name]["multilabel"]), selection, lead_ids)
