"""Any folder of ECG files, in any format ``stmem_jax.core.ecgfile.read_ecg`` reads (DICOM, HL7
aECG, GE MUSE, Philips, SCP-ECG, EDF, CardioSoft XML, WFDB, ...), searched recursively; the format
is told from each file's content. The record id is the file's path relative to the folder.

Labels come from an optional CSV (``--labels``: columns ``file`` and ``label``, several labels
separated by ``;``, optional ``patient``); without one the folder is pre-training data. A labelled
folder is split by patient: the CSV's ``patient`` column, else the patient id in the file (read
while listing, in worker processes), else the file itself. An unlabelled folder is read once, and
its examples carry the file's patient id."""

from __future__ import annotations

import warnings

from tqdm import tqdm

from data_prep.records import Record, Skip
from data_prep.sources.base import Source, vocabulary
from stmem_jax.core import fileio
from stmem_jax.core.ecgfile import ECGFileError, list_files, read_ecg
from stmem_jax.core.label_table import lookup, read_label_table
from stmem_jax.core.signal import RecordError, Signal


class Files(Source):
    name = "files"

    def index_files(self) -> list[str]:
        return [self.options["labels"]] if self.options.get("labels") else []

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        labels_csv = self.options.get("labels")
        table = read_label_table(labels_csv, "file") if labels_csv else None
        records, left_out = [], []
        found = list_files(self.input_dir, self.options.get("pattern"), exclude=self.index_files(), skipped=left_out)
        skips = [Skip(relpath, fileio.join(self.input_dir, relpath), reason) for relpath, reason in left_out]
        for relpath in found:
            path = fileio.join(self.input_dir, relpath)
            labels, patient = [], ""
            if table is not None:
                row = lookup(table, relpath)
                if row is None:
                    skips.append(Skip(relpath, path, "no row in the labels CSV"))
                    continue
                labels, patient = row
            records.append(Record(record_id=relpath, patient_id=patient, source=self.name, path=path, locator=path,
                                  codes=list(labels), code_weights=[1.0] * len(labels), labels={"label": labels}))
        if not any(r.labels["label"] for r in records):
            self.pretraining = True  # unlabelled: everything is pre-training data
            return records, skips
        records = self._read_patients(records, skips)
        self.tasks = {"label": {"classes": vocabulary(records, "label"),
                                "multilabel": any(len(r.labels["label"]) > 1 for r in records)}}
        self.split_task = "label"
        return records, skips

    def _read_patients(self, records: list[Record], skips: list[Skip]) -> list[Record]:
        """Patient ids (and durations) of the records the labels CSV gives no patient for, read
        from the files; unreadable files are skipped here."""
        unknown = [r for r in records if not r.patient_id]
        if not unknown:
            return records
        from data_prep.writer import worker_pool

        paths = [r.path for r in unknown]
        found = []
        with tqdm(total=len(paths), unit="file", desc="reading patient ids", disable=not self.progress) as bar:
            if self.workers > 1 and len(paths) > 1:
                with worker_pool(min(self.workers, len(paths))) as pool:
                    for item in pool.imap(_patient_of, paths, chunksize=8):
                        found.append(item)
                        bar.update()
            else:
                for path in paths:
                    found.append(_patient_of(path))
                    bar.update()
        bad = set()
        for record, (patient, duration, reason) in zip(unknown, found):
            if reason:
                skips.append(Skip(record.record_id, record.path, reason))
                bad.add(record.record_id)
            record.patient_id, record.duration_s = patient or record.record_id, duration
        return [r for r in records if r.record_id not in bad]

    def load(self, record: Record) -> Signal:
        try:
            ecg = read_ecg(record.locator, record.record_id)
        except ECGFileError as error:
            raise RecordError(error.reason) from None
        return Signal(ecg.signal, ecg.fs, list(ecg.leads), patient_id=str(ecg.metadata.get("patient_id") or ""))


def _patient_of(path: str) -> tuple[str, float | None, str]:
    """(patient id in the file or "", duration in s, "") or ("", None, reason it cannot be read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reported when the file is loaded
            ecg = read_ecg(path)
    except ECGFileError as error:
        return "", None, error.reason
    return str(ecg.metadata.get("patient_id") or ""), ecg.duration_s, ""
