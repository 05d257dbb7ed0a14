"""PhysioNet/CinC Challenge 2017: ``training2017/A00001.{hea,mat}`` (1 lead, 300 Hz) and
``REFERENCE.csv`` lines ``A00001,N`` (N normal, A AF, O other rhythm, ~ noisy)."""

from __future__ import annotations


from data_prep.records import Record, Skip
from data_prep.sources.base import Source, read_csv
from stmem_jax.core import fileio
from stmem_jax.core.fileio import walk
from stmem_jax.core.signal import Signal
from stmem_jax.core.wfdb import read_signal

CLASSES = ("N", "A", "O", "~")


class PhysioNet2017(Source):
    """Single-lead (handheld, lead I equivalent); task ``af2017`` with the four classes."""

    name = "physionet2017"
    leads = ("I",)

    def _reference(self) -> str:
        found, _ = walk(self.input_dir, "REFERENCE*.csv")
        if not found:
            raise FileNotFoundError(f"no REFERENCE.csv under {self.input_dir}: is it the training2017 folder?")
        return fileio.join(self.input_dir, found[0])

    def index_files(self) -> list[str]:
        return [self._reference()]

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        reference = read_csv(self._reference(), header=None, names=["record", "label"], dtype=str,
                             keep_default_na=False)
        found, left_out = walk(self.input_dir, "*.hea")
        headers = {fileio.basename(p)[:-4]: fileio.join(self.input_dir, p[:-4]) for p in found}
        records, skipped = [], [Skip(rel, fileio.join(self.input_dir, rel), reason) for rel, reason in left_out]
        for name, label in zip(reference["record"], reference["label"]):
            name, label = str(name).strip(), str(label).strip()
            base = headers.get(name)
            if base is None:
                skipped.append(Skip(name, fileio.join(self.input_dir, name + ".hea"), "header file missing"))
                continue
            if label not in CLASSES:
                skipped.append(Skip(name, base + ".hea", f"unknown label code {label!r}"))
                continue
            records.append(Record(record_id=name, patient_id=name, source=self.name, path=base + ".hea",
                                  locator=base, codes=[label], code_weights=[1.0], labels={"af2017": [label]}))
        self.tasks = {"af2017": {"classes": list(CLASSES), "multilabel": False}}
        self.split_task = "af2017"
        return records, skipped

    def load(self, record: Record) -> Signal:
        signal = read_signal(record.locator)
        # one channel whatever the header calls it: the handheld lead is lead I
        return Signal(signal.data[:1], signal.fs, ["I"])
