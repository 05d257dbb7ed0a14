"""Any folder of WFDB records (searched recursively), labels optional: from ``#Dx:`` header
comments, or from a CSV given with ``--labels`` (columns ``record`` and ``label``; several labels
separated by ``;``). The listing is the shared core's (``stmem_jax.core.wfdb.list_folder``), which
``stmem-embed --wfdb`` reads too."""

from __future__ import annotations

from data_prep.records import Record, Skip, parse_age, parse_sex
from data_prep.sources.base import Source, vocabulary
from stmem_jax.core.wfdb import list_folder, read_signal


class WFDBFolder(Source):
    name = "wfdb"

    def index_files(self) -> list[str]:
        return [self.options["labels"]] if self.options.get("labels") else []

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        found, problems = list_folder(self.input_dir, self.options.get("labels"))
        records = []
        for entry in found:
            fields, header = entry.header.comments, entry.header
            records.append(Record(
                record_id=entry.record_id, patient_id=fields.get("patient", entry.record_id), source=self.name,
                path=entry.base + ".hea", locator=entry.base, codes=entry.labels,
                code_weights=[1.0] * len(entry.labels), labels={"label": entry.labels},
                age=parse_age(fields.get("age")), sex=parse_sex(fields.get("sex", "")),
                duration_s=header.sig_len / header.fs if header.fs else None))
        if any(r.labels["label"] for r in records):
            multilabel = any(len(r.labels["label"]) > 1 for r in records)
            self.tasks = {"label": {"classes": vocabulary(records, "label"), "multilabel": multilabel}}
            self.split_task = "label"
        else:
            self.pretraining = True  # unlabeled: everything is pre-training data
        return records, [Skip(*problem) for problem in problems]

    def load(self, record: Record):
        return read_signal(record.locator)
