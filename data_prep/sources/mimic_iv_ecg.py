"""MIMIC-IV-ECG (PhysioNet v1.0): ``record_list.csv`` (``subject_id, study_id, file_name, ecg_time,
path``; ``path`` relative to the root, without extension), ``machine_measurements.csv`` (``report_0``
.. ``report_17``: the cart's free-text statements, then intervals and axes) and one WFDB record per
study, ``files/pNNNN/pNNNNNNNN/sNNNNNNNN/NNNNNNNN.{hea,dat}`` (12 leads, 500 Hz, 10 s, format 16,
header order I, II, III, aVR, aVF, aVL, V1..V6: leads are mapped by name)."""

from __future__ import annotations


import pandas as pd

from data_prep.records import Record, Skip
from data_prep.sources.base import Source, read_csv, vocabulary
from stmem_jax.core import fileio
from stmem_jax.core.fileio import file_problem, inside
from stmem_jax.core.signal import RecordError
from stmem_jax.core.wfdb import read_signal

RECORD_LIST, MEASUREMENTS = "record_list.csv", "machine_measurements.csv"
REPORT_COLUMNS = tuple(f"report_{k}" for k in range(18))


class MIMICIVECG(Source):
    """Pre-training source (everything in ``train``); patient = subject_id, record = study_id. The
    machine statements are kept as ``codes`` and as the multi-label task ``report`` (left out
    without machine_measurements.csv). Listing checks that the files exist but opens no header."""

    name = "mimic_iv_ecg"
    pretraining = True

    def index_files(self) -> list[str]:
        paths = (fileio.join(self.input_dir, name) for name in (RECORD_LIST, MEASUREMENTS))
        return [path for path in paths if fileio.isfile(path)]

    def _read_csv(self, name: str, required: tuple[str, ...], **kwargs) -> pd.DataFrame:
        return read_csv(fileio.join(self.input_dir, name), required,
                        f": is {self.input_dir} the MIMIC-IV-ECG root folder?", dtype=str, keep_default_na=False,
                        **kwargs)

    def _reports(self) -> dict[str, list[str]] | None:
        """study_id -> the non-empty statements in report order; None without the CSV."""
        if file_problem(fileio.join(self.input_dir, MEASUREMENTS)) == "missing":
            return None
        table = self._read_csv(MEASUREMENTS, ("study_id",), usecols=lambda c: c == "study_id" or c in REPORT_COLUMNS)
        columns = [table[c] for c in REPORT_COLUMNS if c in table.columns]
        reports = {}
        for study, *texts in zip(table["study_id"], *columns):
            if study.strip().isdecimal():
                reports[str(int(study))] = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
        return reports

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        csv_path = fileio.join(self.input_dir, RECORD_LIST)
        listing = self._read_csv(RECORD_LIST, ("subject_id", "study_id", "path"))
        reports = self._reports()
        records, skipped, seen = [], [], set()
        for row, (subject, study, rel) in enumerate(zip(listing["subject_id"], listing["study_id"], listing["path"])):
            subject, study, rel = subject.strip(), study.strip(), rel.strip()
            if not (subject.isdecimal() and study.isdecimal()):
                skipped.append(Skip(f"{RECORD_LIST}[{row}]", csv_path, f"non-numeric subject_id {subject!r} or "
                                                                      f"study_id {study!r} (line {row + 2})"))
                continue
            record_id, base = str(int(study)), fileio.join(self.input_dir, rel)
            if not rel or record_id in seen:
                reason = f"empty path (line {row + 2})" if not rel else f"study_id listed twice (line {row + 2})"
                skipped.append(Skip(record_id, csv_path, reason))
                continue
            try:
                inside(self.input_dir, rel + ".hea", f"path (line {row + 2})")
            except RecordError as error:
                skipped.append(Skip(record_id, csv_path, str(error)))
                continue
            unusable = [(base + ext, problem) for ext in (".hea", ".dat") if (problem := file_problem(base + ext))]
            if unusable:
                path, problem = unusable[0]
                skipped.append(Skip(record_id, path, f"{fileio.basename(path)} {problem}"))
                continue
            seen.add(record_id)
            statements = [] if reports is None else reports.get(record_id, [])
            records.append(Record(
                record_id=record_id, patient_id=str(int(subject)), source=self.name, path=base + ".hea",
                locator=base, codes=statements, code_weights=[1.0] * len(statements),
                labels={} if reports is None else {"report": statements}, split="train", duration_s=10.0))
        self.tasks = {} if reports is None else {"report": {"classes": vocabulary(records, "report"),
                                                            "multilabel": True}}
        return records, skipped

    def load(self, record: Record):
        return read_signal(record.locator)
