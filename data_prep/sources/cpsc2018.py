"""CPSC2018, original release: ``TrainingSet*/A0001.mat`` (struct ``ECG`` with ``data`` 12 x T
at 500 Hz, ``sex``, ``age``) and ``REFERENCE.csv`` (``Recording,First_label,Second_label,Third_label``)."""

from __future__ import annotations

import os

import numpy as np
from scipy import io as sio

from data_prep.records import Record, Skip, parse_age, parse_sex
from data_prep.sources.base import Source, read_csv
from stmem_jax.core import fileio
from stmem_jax.core.fileio import walk
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.signal import RecordError, Signal

# Classes 1..9 of the original release, in its order.
CPSC_CLASSES = ("Normal", "AF", "I-AVB", "LBBB", "RBBB", "PAC", "PVC", "STD", "STE")
CPSC_TASKS = {"cpsc2018": {"classes": list(CPSC_CLASSES), "multilabel": True},
              "cpsc2018_single": {"classes": list(CPSC_CLASSES), "multilabel": False}}


def cpsc_labels(classes: list[str]) -> dict[str, list[str]]:
    """The multi-label and single-label (exactly one class) CPSC2018 tasks of one record."""
    unique = sorted(set(classes), key=CPSC_CLASSES.index)
    return {"cpsc2018": unique, "cpsc2018_single": unique if len(unique) == 1 else []}


class CPSC2018(Source):
    name = "cpsc2018"

    def _reference(self) -> str:
        found, _ = walk(self.input_dir, "REFERENCE.csv")
        if not found:
            raise FileNotFoundError(f"no REFERENCE.csv under {self.input_dir}: is it the CPSC2018 folder?")
        return fileio.join(self.input_dir, found[0])

    def index_files(self) -> list[str]:
        return [self._reference()]

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        csv_path = self._reference()
        reference = read_csv(csv_path, ("Recording", "First_label"), dtype=str, keep_default_na=False)
        found, left_out = walk(self.input_dir, "*.mat")
        mats = {os.path.splitext(fileio.basename(p))[0]: fileio.join(self.input_dir, p) for p in found}
        records, skipped = [], [Skip(rel, fileio.join(self.input_dir, rel), reason) for rel, reason in left_out]
        seen = set()
        for line, row in enumerate(reference.itertuples(index=False), start=2):
            name = str(row[0]).strip()
            path = mats.get(name, fileio.join(self.input_dir, name + ".mat"))
            if not name or name in seen:
                skipped.append(Skip(name or f"REFERENCE.csv[{line}]", csv_path,
                                    f"line {line}: " + ("Recording listed twice" if name else "empty Recording")))
                continue
            seen.add(name)
            if name not in mats:
                skipped.append(Skip(name, path, "signal file missing"))
                continue
            values = [str(v).strip() for v in row[1:] if isinstance(v, str) and v.strip()]
            if not values or any(v not in {str(i) for i in range(1, 10)} for v in values):
                skipped.append(Skip(name, path, f"unknown label code(s) {values}"))
                continue
            classes = [CPSC_CLASSES[int(v) - 1] for v in values]
            records.append(Record(record_id=name, patient_id=name, source=self.name, path=path, locator=path,
                                  codes=classes, code_weights=[1.0] * len(classes), labels=cpsc_labels(classes)))
        self.tasks = dict(CPSC_TASKS)
        self.split_task = "cpsc2018_single"
        return records, skipped

    def load(self, record: Record) -> Signal:
        try:
            with fileio.open(record.locator, "rb") as f:
                ecg = sio.loadmat(f, squeeze_me=True, struct_as_record=False)["ECG"]
            data = np.asarray(ecg.data, dtype=np.float64)
        except Exception as error:
            raise RecordError(f"unreadable .mat ({type(error).__name__}: {error})") from error
        if data.ndim != 2 or data.shape[0] != 12:
            raise RecordError(f"ECG.data has shape {data.shape}, expected 12 x samples")
        record.age = parse_age(getattr(ecg, "age", None))
        record.sex = parse_sex(getattr(ecg, "sex", ""))
        return Signal(data, 500.0, list(LEAD_NAMES))
