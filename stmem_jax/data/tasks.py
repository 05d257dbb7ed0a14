"""A labelled task of a prepared dataset: its classes, the lead selection and the input configs of
its splits."""

from __future__ import annotations

import dataclasses

import ml_collections

from stmem_jax.core.leads import parse_leads
from stmem_jax.core.shards import read_manifests
from stmem_jax.data.pipeline import InputConfig, input_options, lead_indices_for, parse_weights, task_classes


@dataclasses.dataclass
class Task:
    """What a run learns: the task, its classes and the resolved data settings."""

    data_dir: str                      # one prepared folder or a comma-separated list
    name: str
    classes: list[str]
    multilabel: bool
    leads: str | tuple[str, ...]
    lead_ids: tuple[int, ...]
    exclude: frozenset[tuple[str, str, int]] = frozenset()  # (folder, record id, window) left out of every split

    def input(self, config: ml_collections.ConfigDict, split: str, training: bool, batch_size: int,
              label_fraction: float = 1.0) -> InputConfig:
        """The input config of ``split`` with a downstream config's data settings."""
        d = config.data
        return InputConfig(data_dir=self.data_dir, split=split, batch_size=batch_size, training=training,
                           leads=self.leads, crop_samples=d.crop_samples, sample_rate=d.sample_rate, task=self.name,
                           label_fraction=label_fraction, augment=training and d.augment, seed=config.train.seed,
                           shuffle_buffer=d.shuffle_buffer, eval_crops=config.eval.crops,
                           weights=parse_weights(d.weights) if training else None, exclude=self.exclude,
                           **input_options(d))


def resolve_task(data_dir: str, name: str, leads: str) -> Task:
    """The task ``name`` of one or several prepared folders (empty: their only common task; the
    classes are the union of the folders') with ``leads`` (a lead setting or comma-separated names);
    errors name the folder and what it has."""
    manifests = read_manifests(data_dir)
    if not name:
        common = set.intersection(*(set(m.get("tasks") or {}) for m in manifests.values()))
        if len(common) != 1:
            raise ValueError(f"{data_dir} has the tasks {sorted(common) or 'none'}: choose one with data.task")
        (name,) = common
    classes, multilabel = task_classes(manifests, name)
    if not classes:
        raise ValueError(f"task {name!r} of {data_dir} has no classes")
    selection = parse_leads(leads)
    lead_ids = lead_indices_for(InputConfig(data_dir=data_dir, leads=selection))
    return Task(data_dir, name, classes, multilabel, selection, lead_ids)
