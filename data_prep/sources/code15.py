"""CODE-15% (Zenodo 4916206): ``exams.csv`` and ``exams_part*.hdf5`` (``tracings`` (n, 4096, 12)
at 400 Hz, zero-padded equally on both sides; ``exam_id`` (n,))."""

from __future__ import annotations

import os

import h5py
import numpy as np

from data_prep.records import Record, Skip, parse_age, parse_flag, parse_int
from data_prep.sources.base import Source, read_csv
from stmem_jax.core import fileio
from stmem_jax.core.fileio import walk
from stmem_jax.core.signal import RecordError, Signal

FLAGS = ("1dAVb", "RBBB", "LBBB", "SB", "ST", "AF")
LEADS_IN_FILE = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
FS = 400.0


class CODE15(Source):
    """Pre-training source (everything in ``train``); the six abnormality flags are kept as the
    multi-label task ``code15``. HDF5 files are read one exam at a time, never whole."""

    name = "code15"
    pretraining = True

    def index_files(self) -> list[str]:
        return [fileio.join(self.input_dir, "exams.csv")]

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        csv_path = fileio.join(self.input_dir, "exams.csv")
        exams, skipped = self._exams(csv_path)
        records = []
        parts, left_out = walk(self.input_dir, "exams_part*.hdf5")
        skipped += [Skip(rel, fileio.join(self.input_dir, rel), reason) for rel, reason in left_out if os.sep not in rel]
        for path in (fileio.join(self.input_dir, rel) for rel in parts if os.sep not in rel):
            try:
                with fileio.open(path, "rb") as raw, h5py.File(raw, "r") as f:
                    ids = np.asarray(f["exam_id"][:])
                    if f["tracings"].shape[1:] != (4096, 12):
                        raise ValueError(f"tracings has shape {f['tracings'].shape}, expected (n, 4096, 12)")
            except Exception as error:
                skipped.append(Skip(fileio.basename(path), path, f"unreadable HDF5 ({type(error).__name__}: {error})"))
                continue
            for row, exam_id in enumerate(ids):
                record_id = str(int(exam_id))
                if exam_id == 0:
                    skipped.append(Skip(f"{fileio.basename(path)}[{row}]", path, "padding row (exam_id 0)"))
                    continue
                info = exams.get(int(exam_id))
                if not isinstance(info, dict):
                    skipped.append(Skip(record_id, path, "exam_id not in exams.csv") if info is None
                                   else Skip(record_id, csv_path, info))
                    continue
                flags = [flag for flag in FLAGS if parse_flag(info[flag])]
                records.append(Record(
                    record_id=record_id, patient_id=info["patient_id"], source=self.name, path=path,
                    locator=(path, row), codes=flags, code_weights=[1.0] * len(flags), labels={"code15": flags},
                    age=parse_age(info["age"]), sex="M" if parse_flag(info["is_male"]) else "F", split="train"))
        self.tasks = {"code15": {"classes": list(FLAGS), "multilabel": True}}
        return records, skipped

    def _exams(self, csv_path: str) -> tuple[dict[int, dict | str], list[Skip]]:
        """exam_id -> its row of exams.csv (patient_id as a whole number's text), or the reason it is
        unusable; and the rows without a usable exam_id."""
        table = read_csv(csv_path, ("exam_id", "patient_id", "age", "is_male") + FLAGS,
                         f": is {self.input_dir} the CODE-15% folder?", dtype=str, keep_default_na=False)
        exams, skipped = {}, []
        for line, row in enumerate(table.to_dict("records"), start=2):
            exam, patient = parse_int(row["exam_id"]), parse_int(row["patient_id"])
            if exam is None:
                skipped.append(Skip(f"exams.csv[{line}]", csv_path, f"line {line}: exam_id is not a number "
                                                                     f"({row['exam_id']!r})"))
            elif exam in exams:
                exams[exam] = f"line {line}: exam_id {exam} listed twice"
            elif patient is None:
                exams[exam] = f"line {line}: patient_id is not a number ({row['patient_id']!r})"
            else:
                exams[exam] = {**row, "patient_id": str(patient)}
        return exams, skipped

    def load(self, record: Record) -> Signal:
        path, row = record.locator
        try:
            with fileio.open(path, "rb") as raw, h5py.File(raw, "r") as f:
                tracing = np.asarray(f["tracings"][row], dtype=np.float64).T  # (12, 4096)
        except Exception as error:
            raise RecordError(f"unreadable HDF5 row {row} ({type(error).__name__}: {error})") from error
        active = np.flatnonzero(np.any(tracing != 0, axis=0))
        if active.size == 0:
            raise RecordError("all-zero tracing (padding)")
        # the padding is symmetric: strip the same number of zero samples from both ends
        pad = min(active[0], tracing.shape[1] - 1 - active[-1])
        return Signal(tracing[:, pad:tracing.shape[1] - pad], FS, list(LEADS_IN_FILE))
