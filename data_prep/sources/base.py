"""The interface every dataset reader implements."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import pandas as pd

from data_prep.records import Record, Skip
from stmem_jax.core import fileio
from stmem_jax.core.fileio import file_problem
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
        self.input_dir = fileio.absolute(input_dir)
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
        return fileio.relpath(path, self.input_dir)


def read_csv(path: str, required: Sequence[str] = (), hint: str = "", **kwargs) -> pd.DataFrame:
    """An index CSV (``kwargs`` go to ``pandas.read_csv``). Errors name the file: FileNotFoundError
    when it is missing (``hint`` follows), ValueError when it is not a regular file, is empty, binary
    or malformed, lacks a ``required`` column or has no row."""
    problem = file_problem(path)
    if problem == "missing":
        raise FileNotFoundError(f"{path} not found{hint}")
    if problem:
        raise ValueError(f"{path}: the file {problem}")
    try:
        with fileio.open(path, "rb") as f:
            table = pd.read_csv(f, **kwargs)
    except (OSError, ValueError) as error:  # pandas' parser and empty-file errors are ValueErrors
        raise ValueError(f"{path}: not a readable CSV ({error})") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    if table.empty:
        raise ValueError(f"{path}: no rows")
    return table


def vocabulary(records: list[Record], task: str) -> list[str]:
    return sorted({name for r in records for name in r.labels.get(task, [])})
