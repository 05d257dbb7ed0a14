"""Label CSVs for folders of ECG files: one row per file or record, its labels (several separated by
``;``) and optionally its patient."""

from __future__ import annotations

import csv
import os

from stmem_jax.core import fileio
from stmem_jax.core.fileio import file_problem


def read_label_table(path: str, key: str) -> dict[str, tuple[list[str], str]]:
    """``{key value: (labels, patient or "")}`` from a CSV with the columns ``key`` and ``label``
    and an optional ``patient``; errors name the file and the row."""
    problem = file_problem(path)
    if problem:
        raise ValueError(f"{path}: the labels CSV {problem}")
    try:
        with fileio.open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path}: cannot read the labels CSV ({error})") from error
    if not rows or not {key, "label"} <= set(rows[0]):
        raise ValueError(f"{path}: a labels CSV needs the columns '{key}' and 'label' (and optionally 'patient')")
    table = {}
    for line, row in enumerate(rows, start=2):
        name = (row[key] or "").strip()
        if not name:
            raise ValueError(f"{path}, line {line}: empty '{key}'")
        if name in table:
            raise ValueError(f"{path}, line {line}: {name!r} is listed twice")
        labels = [x.strip() for x in (row["label"] or "").split(";") if x.strip()]
        table[name] = (labels, (row.get("patient") or "").strip())
    return table


def lookup(table: dict[str, tuple[list[str], str]], relpath: str) -> tuple[list[str], str] | None:
    """The row of a file: by its path relative to the folder, with or without extension, or by its
    file name (with or without extension)."""
    stem = os.path.splitext(relpath)[0]
    name = os.path.basename(relpath)
    for candidate in (relpath, stem, name, os.path.splitext(name)[0]):
        if candidate in table:
            return table[candidate]
    return None
