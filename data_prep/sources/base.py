"""The interface every dataset reader implements."""

from __future__ import annotations

import abc
import os
from typing import Any

from data_prep.records import Record, Skip
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.signal import Signal


class Source(abc.ABC):
    """A dataset reader.

    ``list_records`` is cheap (index files and headers only) and runs once in the main process;
    ``load`` reads one record's signal and runs in worker processes, so a reader holds only
    picklable state. ``tasks`` (name -> {'classes': [...], 'multilabel': bool}) is known after
    ``list_records``; ``split_task`` names the task splits are stratified by.
    """

    name = ""
    leads: tuple[str, ...] = LEAD_NAMES
    pretraining = False  # pre-training sources put everything in 'train'
    workers = 1          # processes a reader may use while listing (set by stmem-prepare; not part of the plan)
    progress = False     # whether listing may show a progress bar

    def __init__(self, input_dir: str, options: dict[str, Any] | None = None):
        self.input_dir = os.path.abspath(input_dir)
        self.options = options or {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.split_task: str | None = None

    @abc.abstractmethod
    def list_records(self) -> tuple[list[Record], list[Skip]]:
        """Every record of the input with its labels, and the records left out while listing."""

    @abc.abstractmethod
    def load(self, record: Record) -> Signal:
        """The record's signal; raises RecordError when it cannot be read."""

    def index_files(self) -> list[str]:
        """Small files (CSVs) whose checksums go into the manifest."""
        return []

    def relpath(self, path: str) -> str:
        return os.path.relpath(path, self.input_dir)


def vocabulary(records: list[Record], task: str) -> list[str]:
    return sorted({name for r in records for name in r.labels.get(task, [])})
