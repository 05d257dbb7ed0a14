"""WFDB reading (``.hea`` with ``.dat`` or MATLAB v4 ``.mat`` signal files), and folders of WFDB
records with optional labels.

Headers are parsed here (the WFDB header format is line-based and simple); signals in format 16
(with an optional byte offset, as the Challenge's ``.mat`` files use) are read straight with NumPy.
Other formats fall back to the ``wfdb`` package.
"""

from __future__ import annotations

import dataclasses
import re
import struct

import numpy as np
import wfdb

from stmem_jax.core import fileio
from stmem_jax.core.fileio import file_problem, inside, walk
from stmem_jax.core.label_table import lookup, read_label_table
from stmem_jax.core.signal import RecordError, Signal

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}
_FORMAT = re.compile(r"^(\d+)(?:x\d+)?(?::\d+)?(?:\+(\d+))?$")
_GAIN = re.compile(r"^([-+\d.eE]+)(?:\(([-\d]+)\))?(?:/(\S+))?$")


@dataclasses.dataclass
class Header:
    fs: float
    sig_len: int
    names: list[str]
    files: list[str]
    formats: list[str]
    offsets: list[int]
    gains: list[float]
    baselines: list[int]
    units: list[str]
    comments: dict[str, str]   # '#Key: value' lines, lower-case keys


def read_header(record_path: str) -> Header:
    """The header of ``record_path`` (path without extension)."""
    path = record_path + ".hea"
    problem = file_problem(path)
    if problem:
        raise RecordError(f"header file {problem}")
    try:
        with fileio.open(path, encoding="latin-1") as f:
            lines = [line.strip() for line in f]
    except OSError as error:
        raise RecordError(f"header file unreadable ({error.strerror})") from error
    try:
        return _parse_header(lines)
    except (ValueError, IndexError) as error:
        raise RecordError(f"unreadable header ({error})") from error


def _parse_header(lines: list[str]) -> Header:
    comments, body = {}, []
    for line in lines:
        if line.startswith("#"):
            key, sep, value = line[1:].partition(":")
            if sep:
                comments[key.strip().lower()] = value.strip()
        elif line:
            body.append(line.split())
    record = body[0]
    if "/" in record[0]:
        raise ValueError("multi-segment records are not supported")
    nsig = int(record[1])
    fs = float(record[2].split("/")[0]) if len(record) > 2 else 250.0
    sig_len = int(record[3]) if len(record) > 3 else 0
    header = Header(fs, sig_len, [], [], [], [], [], [], [], comments)
    if len(body) < 1 + nsig:
        raise ValueError(f"{nsig} signals announced, {len(body) - 1} signal lines found")
    for fields in body[1:1 + nsig]:
        fmt = _FORMAT.match(fields[1])
        if not fmt:
            raise ValueError(f"bad format field {fields[1]!r}")
        gain = _GAIN.match(fields[2]) if len(fields) > 2 else None
        adc_zero = int(fields[4]) if len(fields) > 4 else 0
        header.files.append(fields[0])
        header.formats.append(fmt.group(1))
        header.offsets.append(int(fmt.group(2) or 0))
        header.gains.append(float(gain.group(1)) if gain and float(gain.group(1)) != 0 else 200.0)
        header.baselines.append(int(gain.group(2)) if gain and gain.group(2) else adc_zero)
        header.units.append(gain.group(3) if gain and gain.group(3) else "mV")
        header.names.append(" ".join(fields[8:]) if len(fields) > 8 else f"ch{len(header.names)}")
    return header


def read_signal(record_path: str) -> Signal:
    """The physical signal in mV, (leads, samples), with the header's lead names and rate. The
    signal files the header names must be regular files inside the header's folder."""
    header = read_header(record_path)
    folder = fileio.dirname(record_path) or "."
    files = {name: signal_file(folder, name) for name in header.files}
    if len(files) == 1 and set(header.formats) == {"16"} and len(set(header.offsets)) == 1:
        digital = _read_format16(files[header.files[0]], header.files[0], header)
    else:
        try:
            with fileio.local_copy(record_path + ".hea", *files.values()) as (header_copy, *_):
                digital = np.asarray(wfdb.rdrecord(header_copy[:-4], physical=False).d_signal, dtype=np.float64).T
        except Exception as error:  # wfdb raises many kinds on broken files
            raise RecordError(f"unreadable signal ({type(error).__name__}: {error})") from error
    gains = np.asarray(header.gains)[:, None]
    baselines = np.asarray(header.baselines, dtype=np.float64)[:, None]
    scale = np.array([_UNIT_TO_MV.get(u.strip().lower(), 1.0) for u in header.units])[:, None]
    return Signal((digital - baselines) / gains * scale, header.fs, list(header.names))


def signal_file(folder: str, name: str) -> str:
    """The real path of the signal file ``name`` a header in ``folder`` names; RecordError when it
    leads outside the folder or is not a regular file."""
    path = inside(folder, name, "signal file")
    problem = file_problem(path)
    if problem:
        raise RecordError(f"signal file {name} {problem}")
    return path


def _read_format16(path: str, name: str, header: Header) -> np.ndarray:
    nsig, offset = len(header.names), header.offsets[0]
    try:
        if name.lower().endswith(".mat"):
            _check_mat(path, name, nsig, header.sig_len, offset)
        content = fileio.read_bytes(path)[offset:]
        raw = np.frombuffer(content, dtype="<i2", count=len(content) // 2)
    except (OSError, ValueError) as error:
        raise RecordError(f"unreadable signal file {name} ({error})") from error
    expected = header.sig_len * nsig if header.sig_len else raw.size - raw.size % nsig
    if raw.size < expected or expected == 0:
        raise RecordError(f"unreadable signal: {name} is truncated "
                          f"({raw.size // max(nsig, 1)} of {header.sig_len} samples)")
    digital = raw[:expected].reshape(-1, nsig).T.astype(np.float64)
    digital[digital == -32768] = np.nan  # WFDB's invalid-sample value in format 16
    return digital


def _check_mat(path: str, name: str, nsig: int, samples: int, offset: int) -> None:
    """A ``.mat`` signal file must be the MATLAB (v4, or v5 as wfdb writes it) int16 matrix of
    ``nsig`` rows and ``samples`` columns (if known) whose values start at ``offset``, as its header says."""
    with fileio.open(path, "rb") as f:
        head = f.read(max(offset, 20))
    if len(head) < max(offset, 20):
        ok = False
    elif head.startswith(b"MATLAB 5.0"):  # v5: the values' tag (type miINT16, byte count) precedes them
        kind, size = struct.unpack("<2I", head[offset - 8:offset]) if offset >= 136 else (0, 0)
        ok = head[126:128] == b"IM" and kind == 3 and (not samples or size == 2 * nsig * samples)
    else:  # v4: type 30 (little-endian int16), rows, columns, no imaginary part, then the name
        kind, rows, columns, imaginary, name_length = struct.unpack("<5i", head[:20])
        ok = (kind, rows, imaginary, 20 + name_length) == (30, nsig, 0, offset) and (not samples or columns == samples)
    if not ok:
        raise RecordError(f"unreadable signal: {name} is not the MATLAB matrix its header describes "
                          f"({nsig} x {samples or '?'} int16 values from byte {offset})")


@dataclasses.dataclass
class FolderRecord:
    """A WFDB record found under a folder; ``record_id`` is its path relative to the folder, without
    extension; ``labels`` come from the labels CSV, else from the header's ``#Dx:`` comment."""

    record_id: str
    base: str
    header: Header
    labels: list[str]


def list_folder(folder: str, labels_csv: str | None = None
                ) -> tuple[list[FolderRecord], list[tuple[str, str, str]]]:
    """Every WFDB record under ``folder`` (recursively, sorted; ``fileio.walk``), and ``(record_id,
    path, reason)`` of those left out (unreadable header, no row in the labels CSV, not a regular
    file). A CSV row matches a record by its relative path or its file name."""
    table = read_label_table(labels_csv, "record") if labels_csv else None
    headers, left_out = walk(folder, "*.hea")
    skipped = [(relpath, fileio.join(folder, relpath), reason) for relpath, reason in left_out]
    records = []
    for relpath in headers:
        base = fileio.join(folder, relpath[:-4])
        record_id = relpath[:-4]
        try:
            header = read_header(base)
        except RecordError as error:
            skipped.append((record_id, base + ".hea", str(error)))
            continue
        if table is None:
            labels = [c.strip() for c in header.comments.get("dx", "").split(",") if c.strip()]
        else:
            row = lookup(table, record_id)
            if row is None:
                skipped.append((record_id, base + ".hea", "no row in the labels CSV"))
                continue
            labels = row[0]
        records.append(FolderRecord(record_id, base, header, labels))
    return records, skipped
