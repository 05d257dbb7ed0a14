"""``stmem-overlap``: the windows of prepared folders B that are also in prepared folders A (the same
ECG, whatever its file format, name or gain), per split of B: the leakage check between
pre-training and downstream data.

    stmem-overlap /data/challenge2021 /data/ptbxl --csv overlap.csv

Each side is one folder or a comma-separated list. Matching is by content fingerprint
(``stmem_jax.core.fingerprint``); folders prepared before fingerprints existed are fingerprinted
from their shards. The last line printed is ``total: N windows, M patients``; the CSV lists every
overlapping window of B with the record of A it matches.
"""

from __future__ import annotations

import csv
import functools
import json
from collections import defaultdict
from typing import Any

import numpy as np

from stmem_jax.core import fileio
from stmem_jax.core import fingerprint
from stmem_jax.core.shards import MANIFEST, check_scale, data_dirs, read_manifests, shard_files

CSV_COLUMNS = ("b_folder", "b_split", "b_record_id", "b_window", "b_patient_id",
               "a_folder", "a_split", "a_record_id", "a_window", "a_patient_id")


def folder_table(directory: str, manifest: dict) -> dict[str, np.ndarray]:
    """The fingerprint table of a prepared folder: its ``fingerprints.npz``, else computed from its shards."""
    path = fileio.join(directory, fingerprint.FILE)
    if fileio.isfile(path):
        try:
            return fingerprint.load(path)
        except Exception as error:  # truncated or foreign file: np.load raises zip, pickle or value errors
            raise ValueError(f"{path} is unreadable ({type(error).__name__}: {error}); delete it to "
                             f"fingerprint {directory} from its shards") from None
    import tensorflow as tf

    text = tf.io.FixedLenFeature([], tf.string)
    spec = {"signal": text, "record_id": text, "patient_id": text, "scale": tf.io.FixedLenFeature([], tf.float32),
            "window": tf.io.FixedLenFeature([], tf.int64)}
    shape = (len(manifest["leads"]), manifest["window_samples"])
    columns = defaultdict(list)
    for split in manifest.get("splits") or {}:
        for shard, _ in shard_files(directory, manifest, split):
            for index, ex in enumerate(_examples(shard, spec)):
                scale = np.float32(check_scale(float(ex["scale"]), shard, index))
                window = np.frombuffer(ex["signal"], "<i2").reshape(shape).astype(np.float32) * scale
                columns["split"].append(split)
                columns["record_id"].append(ex["record_id"].decode())
                columns["patient_id"].append(ex["patient_id"].decode())
                columns["window"].append(int(ex["window"]))
                columns["profile"].append(fingerprint.profile(window, manifest["leads"]))
    if not columns:
        return fingerprint.concatenate([])
    return {"split": np.array(columns["split"], str), "record_id": np.array(columns["record_id"], str),
            "patient_id": np.array(columns["patient_id"], str), "window": np.array(columns["window"], np.int32),
            "profile": np.stack(columns["profile"])}


def _examples(shard: str, spec: dict):
    """The parsed examples of a shard; a ValueError naming it when it cannot be read."""
    import tensorflow as tf

    from stmem_jax.data.records import record_dataset

    try:
        yield from record_dataset(shard).map(lambda s: tf.io.parse_single_example(s, spec)).as_numpy_iterator()
    except tf.errors.OpError as error:
        raise ValueError(f"cannot read shard {shard}: {error.message}") from None


def _side(value) -> dict[str, np.ndarray]:
    """The fingerprint tables of one side's folders, concatenated, with a ``folder`` column."""
    tables, names = [], []
    for directory, manifest in read_manifests(value).items():
        table = folder_table(directory, manifest)
        tables.append(table)
        names.append(np.full(len(table["window"]), directory))
    out = fingerprint.concatenate(tables)
    out["folder"] = np.concatenate(names) if names else np.array([], str)
    return out


@functools.lru_cache(maxsize=8)
def _compare(a: str, b: str, a_split: str | None, stamp: tuple) -> tuple[dict[str, Any], tuple[dict, ...]]:
    read_manifests(_both(a, b))  # the same recipe on both sides, else the fingerprints differ
    side_a, side_b = _side(a), _side(b)
    if a_split is not None:
        side_a = {k: v[side_a["split"] == a_split] for k, v in side_a.items()}
    pairs = fingerprint.matches(side_a["profile"], side_b["profile"])

    def fields(side, row, prefix):
        return {f"{prefix}_{k}": (int if k == "window" else str)(side[k][row])
                for k in ("folder", "split", "record_id", "window", "patient_id")}

    rows = tuple({**fields(side_b, j, "b"), **fields(side_a, i, "a")} for i, j in pairs)
    matched = sorted({j for _, j in pairs})
    splits = {}
    for split in dict.fromkeys(side_b["split"]):
        members = side_b["split"] == split
        hit = np.isin(np.arange(len(members)), matched) & members
        patients = set(zip(side_b["folder"][members], side_b["patient_id"][members]))
        splits[str(split)] = {"windows": int(hit.sum()), "of_windows": int(members.sum()),
                              "patients": len(set(zip(side_b["folder"][hit], side_b["patient_id"][hit]))),
                              "of_patients": len(patients)}
    total = {"windows": len(matched),
             "patients": len({(side_b["folder"][j], side_b["patient_id"][j]) for j in matched})}
    return {"reference": a, "reference_split": a_split, "data": b, "splits": splits, "total": total}, rows


def _both(a: str, b: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(data_dirs(a) + data_dirs(b)))


def compare(a, b, a_split: str | None = None) -> tuple[dict[str, Any], list[dict]]:
    """(counts per split of B and in total, one row per matching pair) of the windows of ``b`` also in
    ``a`` (each one folder or a comma-separated list; of ``a``, only its split ``a_split`` if given)."""
    a, b = (v if isinstance(v, str) else ",".join(v) for v in (a, b))
    stamp = tuple(fileio.version(fileio.join(d, name)) if fileio.exists(fileio.join(d, name)) else 0
                  for d in _both(a, b) for name in (MANIFEST, fingerprint.FILE))
    report, rows = _compare(a, b, a_split, stamp)
    return json.loads(json.dumps(report)), [dict(r) for r in rows]


def excluded(rows: list[dict]) -> frozenset[tuple[str, str, int]]:
    """(folder, record id, window) of the B side of ``rows``: what ``exclude`` drops."""
    return frozenset((str(r["b_folder"]), str(r["b_record_id"]), int(r["b_window"])) for r in rows)


def describe(report: dict[str, Any]) -> list[str]:
    """The report as lines: one per split of B, then ``total: N windows, M patients``."""
    reference = report["reference"] + (f" ({report['reference_split']})" if report["reference_split"] else "")
    lines = [f"{split}: {s['windows']} of {s['of_windows']} windows, {s['patients']} of {s['of_patients']} "
             f"patients also in {reference}" for split, s in report["splits"].items()]
    return lines + [f"total: {report['total']['windows']} windows, {report['total']['patients']} patients"]


def write_csv(path: str, rows: list[dict]) -> None:
    with fileio.open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def pretraining_data(init: str) -> tuple[str, str] | None:
    """(folders, split) a ``stmem-pretrain`` workdir trained on (its ``config.json``), or None for any
    other init."""
    path = fileio.join(init, "config.json")
    if not init or not fileio.isfile(path):
        return None
    config = json.loads(fileio.read_text(path))
    if "method" not in config:  # a downstream workdir
        return None
    data = config.get("data", {})
    return (data["dir"], data.get("split", "train")) if data.get("dir") else None

