"""PTB-XL (PhysioNet v1.0.3): ``ptbxl_database.csv``, ``scp_statements.csv``, ``records500/``."""

from __future__ import annotations

import ast

import pandas as pd

from data_prep.records import Record, Skip, parse_age, parse_int
from data_prep.sources.base import Source, read_csv, vocabulary
from stmem_jax.core import fileio
from stmem_jax.core.fileio import inside
from stmem_jax.core.signal import RecordError
from stmem_jax.core.wfdb import read_signal

# strat_fold -> split: the ST-MEM protocol (70/10/20) and the Strodthoff et al. benchmark.
SPLIT_SCHEMES = {
    "st_mem": {**{f: "train" for f in range(1, 8)}, 8: "validation", 9: "test", 10: "test"},
    "benchmark": {**{f: "train" for f in range(1, 9)}, 9: "validation", 10: "test"},
}
BENCHMARK_TASKS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")


class PTBXL(Source):
    """Tasks: the six benchmark label sets (multi-label) and ``st_mem``, the superdiagnostic
    records with exactly one superclass as a 5-class single-label task. A code counts whatever
    its likelihood (as in the benchmark); likelihoods / 100 are kept as ``code_weights``."""

    name = "ptbxl"

    def index_files(self) -> list[str]:
        return [fileio.join(self.input_dir, f) for f in ("ptbxl_database.csv", "scp_statements.csv")]

    def _read_csv(self, name: str, required: tuple[str, ...], **kwargs) -> pd.DataFrame:
        return read_csv(fileio.join(self.input_dir, name), required,
                        f": is {self.input_dir} the PTB-XL root folder?", **kwargs)

    def list_records(self) -> tuple[list[Record], list[Skip]]:
        resolution = self.options.get("resolution", "hr")
        database = self._read_csv("ptbxl_database.csv", ("ecg_id", "patient_id", "scp_codes", "strat_fold",
                                                         f"filename_{resolution}"))
        statements = self._read_csv("scp_statements.csv", ("diagnostic", "form", "rhythm", "diagnostic_class",
                                                           "diagnostic_subclass"), index_col=0)
        scheme = SPLIT_SCHEMES[self.options.get("split_scheme", "st_mem")]
        csv_path = fileio.join(self.input_dir, "ptbxl_database.csv")
        records, skipped, seen = [], [], set()
        for line, row in enumerate(database.itertuples(index=False), start=2):
            rel = getattr(row, f"filename_{resolution}")
            base = fileio.join(self.input_dir, str(rel))
            path = base + ".hea"
            ids = [parse_int(row.ecg_id), parse_int(row.patient_id), parse_int(row.strat_fold)]
            if None in ids:
                name = ("ecg_id", "patient_id", "strat_fold")[ids.index(None)]
                skipped.append(Skip(str(row.ecg_id), csv_path, f"line {line}: {name} is not a number "
                                                               f"({getattr(row, name)!r})"))
                continue
            record_id, patient, fold = str(ids[0]), str(ids[1]), ids[2]
            try:
                if record_id in seen:
                    raise RecordError(f"ecg_id {record_id} listed twice")
                if not isinstance(rel, str) or not rel.strip():
                    raise RecordError(f"empty filename_{resolution}")
                inside(self.input_dir, rel + ".hea", f"filename_{resolution}")
            except RecordError as error:
                skipped.append(Skip(record_id, csv_path, f"line {line}: {error}"))
                continue
            seen.add(record_id)
            try:
                scp = ast.literal_eval(row.scp_codes)
                if not isinstance(scp, dict):
                    raise ValueError("not a dict")
                weights = [float(v) / 100 for v in scp.values()]
            except (ValueError, SyntaxError, TypeError) as error:
                skipped.append(Skip(record_id, csv_path, f"line {line}: unparsable scp_codes {row.scp_codes!r} "
                                                         f"({error})"))
                continue
            unknown = [code for code in scp if code not in statements.index]
            if unknown:
                skipped.append(Skip(record_id, path, f"unknown SCP code(s) {', '.join(unknown)}"))
                continue
            if fold not in scheme:
                skipped.append(Skip(record_id, path, f"strat_fold {fold} outside 1..10"))
                continue
            records.append(Record(
                record_id=record_id, patient_id=patient, source=self.name, path=path,
                locator=base, codes=list(scp), code_weights=weights,
                labels=_labels(list(scp), statements), age=parse_age(getattr(row, "age", None)),
                sex={0: "M", 1: "F"}.get(parse_int(getattr(row, "sex", None)), ""), fold=fold, split=scheme[fold], duration_s=10.0))
        self.tasks = {task: {"classes": vocabulary(records, task), "multilabel": True} for task in BENCHMARK_TASKS}
        self.tasks["st_mem"] = {"classes": vocabulary(records, "st_mem"), "multilabel": False}
        self.split_task = "st_mem"
        return records, skipped

    def load(self, record: Record):
        return read_signal(record.locator)


def _labels(codes: list[str], statements: pd.DataFrame) -> dict[str, list[str]]:
    def members(column: str) -> list[str]:
        return [c for c in codes if statements.at[c, column] == 1]

    diagnostic = members("diagnostic")
    labels = {
        "all": sorted(codes),
        "diagnostic": sorted(diagnostic),
        "subdiagnostic": sorted({str(statements.at[c, "diagnostic_subclass"]) for c in diagnostic
                                 if isinstance(statements.at[c, "diagnostic_subclass"], str)}),
        "superdiagnostic": sorted({str(statements.at[c, "diagnostic_class"]) for c in diagnostic
                                   if isinstance(statements.at[c, "diagnostic_class"], str)}),
        "form": sorted(members("form")),
        "rhythm": sorted(members("rhythm")),
    }
    labels["st_mem"] = labels["superdiagnostic"] if len(labels["superdiagnostic"]) == 1 else []
    return labels
