"""CODE-15% (Zenodo 4916206): ``exams.csv`` and ``exams_part*.hdf5`` (``tracings`` (n, 4096, 12)
at 400 Hz, zero-padded equally on both sides; ``exam_id`` (n,))."""

from __future__ import annotations

import glob
import os

import h5py
import numpy as np
import pandas as pd

from data_prep.records import Record, Skip, parse_age
from data_prep.sources.base import Source
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
        return [os.path.join(self.input_dir, "exams.csv")]

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        csv_path = os.path.join(self.input_dir, "exams.csv")
        if not os.path.isfile(csv_path):
            raise FileNotFoundError(f"{csv_path} not found: is {self.input_dir} the CODE-15% folder?")
        exams = pd.read_csv(csv_path).set_index("exam_id")
        records, skipped = [], []
        for path in sorted(glob.glob(os.path.join(self.input_dir, "exams_part*.hdf5"))):
            try:
                with h5py.File(path, "r") as f:
                    ids = np.asarray(f["exam_id"][:])
                    if f["tracings"].shape[1:] != (4096, 12):
                        raise ValueError(f"tracings has shape {f['tracings'].shape}, expected (n, 4096, 12)")
            except Exception as error:
                skipped.append(Skip(os.path.basename(path), path, f"unreadable HDF5 ({type(error).__name__}: {error})"))
                continue
            for row, exam_id in enumerate(ids):
                record_id = str(int(exam_id))
                if exam_id == 0:
                    skipped.append(Skip(f"{os.path.basename(path)}[{row}]", path, "padding row (exam_id 0)"))
                    continue
                if exam_id not in exams.index:
                    skipped.append(Skip(record_id, path, "exam_id not in exams.csv"))
                    continue
                info = exams.loc[exam_id]
                flags = [flag for flag in FLAGS if bool(info[flag])]
                records.append(Record(
                    record_id=record_id, patient_id=str(int(info["patient_id"])), source=self.name, path=path,
                    locator=(path, row), codes=flags, code_weights=[1.0] * len(flags), labels={"code15": flags},
                    age=parse_age(info["age"]), sex="M" if bool(info["is_male"]) else "F", split="train"))
        self.tasks = {"code15": {"classes": list(FLAGS), "multilabel": True}}
        return records, skipped

    def load(self, record: Record) -> Signal:
        path, row = record.locator
        try:
            with h5py.File(path, "r") as f:
                tracing = np.asarray(f["tracings"][row], dtype=np.float64).T  # (12, 4096)
        except Exception as error:
            raise RecordError(f"unreadable HDF5 row {row} ({type(error).__name__}: {error})") from error
        active = np.flatnonzero(np.any(tracing != 0, axis=0))
        if active.size == 0:
            raise RecordError("all-zero tracing (padding)")
        # the padding is symmetric: strip the same number of zero samples from both ends
        pad = min(active[0], tracing.shape[1] - 1 - active[-1])
        return Signal(tracing[:, pad:tracing.shape[1] - pad], FS, list(LEADS_IN_FILE))
