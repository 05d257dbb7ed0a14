"""Any folder of WFDB records (searched recursively), labels optional: from ``#Dx:`` header
comments, or from a CSV given with ``--labels`` (columns ``record`` and ``label``; several labels
separated by ``;``)."""

from __future__ import annotations

import glob
import os

import pandas as pd

from data_prep.records import Record, RecordError, Skip, parse_age, parse_sex
from data_prep.sources.base import Source, vocabulary
from data_prep.sources.wfdb_io import read_header, read_signal


class WFDBFolder(Source):
    name = "wfdb"

    def index_files(self) -> list[str]:
        return [self.options["labels"]] if self.options.get("labels") else []

    def _label_table(self) -> dict[str, list[str]] | None:
        path = self.options.get("labels")
        if not path:
            return None
        table = pd.read_csv(path, dtype=str)
        if not {"record", "label"} <= set(table.columns):
            raise ValueError(f"{path}: a labels CSV needs the columns 'record' and 'label'")
        return {r.strip(): [x.strip() for x in str(l).split(";") if x.strip()]
                for r, l in zip(table["record"], table["label"].fillna(""))}

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        table = self._label_table()
        records, skipped = [], []
        for header_path in sorted(glob.glob(os.path.join(self.input_dir, "**", "*.hea"), recursive=True)):
            base = header_path[:-4]
            record_id = os.path.relpath(base, self.input_dir)
            try:
                header = read_header(base)
            except RecordError as error:
                skipped.append(Skip(record_id, header_path, str(error)))
                continue
            fields = header.comments
            if table is not None:
                labels = table.get(record_id, table.get(os.path.basename(base)))
                if labels is None:
                    skipped.append(Skip(record_id, header_path, "no row in the labels CSV"))
                    continue
            else:
                labels = [c.strip() for c in fields.get("dx", "").split(",") if c.strip()]
            records.append(Record(
                record_id=record_id, patient_id=fields.get("patient", record_id), source=self.name,
                path=header_path, locator=base, codes=labels, code_weights=[1.0] * len(labels),
                labels={"label": labels}, age=parse_age(fields.get("age")), sex=parse_sex(fields.get("sex", "")),
                duration_s=header.sig_len / header.fs if header.fs else None))
        if any(r.labels["label"] for r in records):
            multilabel = any(len(r.labels["label"]) > 1 for r in records)
            self.tasks = {"label": {"classes": vocabulary(records, "label"), "multilabel": multilabel}}
            self.split_task = "label"
        else:
            self.pretraining = True  # unlabeled: everything is pre-training data
        return records, skipped

    def load(self, record: Record):
        return read_signal(record.locator)
