"""PhysioNet/CinC Challenge 2021 (v1.0.3): ``training/<source>/gNN/<record>.{hea,mat}`` with
``#Age``, ``#Sex`` and ``#Dx`` (SNOMED CT codes) header comments."""

from __future__ import annotations


from data_prep.records import Record, Skip, parse_age, parse_sex
from data_prep.sources.base import Source, vocabulary
from data_prep.sources.cpsc2018 import CPSC_TASKS, cpsc_labels
from stmem_jax.core import fileio
from stmem_jax.core.fileio import walk
from stmem_jax.core.signal import RecordError
from stmem_jax.core.wfdb import read_header, read_signal

SUBSETS = ("chapman_shaoxing", "ningbo", "cpsc_2018", "cpsc_2018_extra", "georgia", "ptb-xl", "ptb",
           "st_petersburg_incart")
PRETRAINING_SUBSETS = ("chapman_shaoxing", "ningbo")
# The Challenge scores these pairs as one class; the first code is kept.
EQUIVALENT = {"713427006": "59118001", "63593006": "284470004", "17338001": "427172004"}
CPSC_SNOMED = {"426783006": "Normal", "164889003": "AF", "270492004": "I-AVB", "164909002": "LBBB",
               "59118001": "RBBB", "284470004": "PAC", "164884008": "PVC", "429622005": "STD",
               "164931005": "STE"}


class Challenge2021(Source):
    """Tasks: ``snomed`` (multi-label over the codes present, equivalent pairs merged) and, when
    CPSC2018 records are included, ``cpsc2018`` / ``cpsc2018_single`` from their SNOMED codes.
    Chapman-Shaoxing and Ningbo are pre-training sources: their records go to ``train``."""

    name = "challenge2021"

    def subsets(self) -> dict[str, str]:
        root = fileio.join(self.input_dir, "training")
        root = root if fileio.isdir(root) else self.input_dir
        found = {name: fileio.join(root, name) for name in sorted(fileio.listdir(root))
                 if fileio.isdir(fileio.join(root, name))}
        wanted = self.options.get("subsets") or [n for n in found if n in SUBSETS]
        missing = [n for n in wanted if n not in found]
        if missing or not wanted:
            raise FileNotFoundError(f"sub-folder(s) {missing or list(SUBSETS)} not found in {root}")
        return {name: found[name] for name in wanted}

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        records, skipped = [], []
        for subset, folder in self.subsets().items():
            headers, left_out = walk(folder, "*.hea")
            skipped += [Skip(f"{subset}/{rel}", fileio.join(folder, rel), reason) for rel, reason in left_out]
            for header_path in (fileio.join(folder, rel) for rel in headers):
                base = header_path[:-4]
                record_id = f"{subset}/{fileio.basename(base)}"
                try:
                    header = read_header(base)
                    fields = header.comments
                    codes = [c.strip() for c in fields.get("dx", "").split(",") if c.strip()]
                    if any(not c.isdigit() for c in codes):
                        raise RecordError(f"unknown label code(s) in #Dx: {fields.get('dx')!r}")
                except RecordError as error:
                    skipped.append(Skip(record_id, header_path, str(error)))
                    continue
                codes = list(dict.fromkeys(EQUIVALENT.get(c, c) for c in codes))
                labels = {"snomed": codes}
                if subset.startswith("cpsc_2018"):
                    labels |= cpsc_labels([CPSC_SNOMED[c] for c in codes if c in CPSC_SNOMED])
                split = "train" if self._all_train(subset) else None
                records.append(Record(
                    record_id=record_id, patient_id=record_id, source=subset, path=header_path, locator=base,
                    codes=codes, code_weights=[1.0] * len(codes), labels=labels,
                    age=parse_age(fields.get("age")), sex=parse_sex(fields.get("sex", "")), split=split,
                    duration_s=header.sig_len / header.fs if header.fs else None))
        self.tasks = {"snomed": {"classes": vocabulary(records, "snomed"), "multilabel": True}}
        if any(r.source.startswith("cpsc_2018") for r in records):
            self.tasks |= CPSC_TASKS
            self.split_task = "cpsc2018_single"
        else:
            self.split_task = "snomed"
        return records, skipped

    def _all_train(self, subset: str) -> bool:
        mode = self.options.get("split_mode", "auto")
        return mode == "train" or (mode == "auto" and subset in PRETRAINING_SUBSETS)

    def load(self, record: Record):
        return read_signal(record.locator)
