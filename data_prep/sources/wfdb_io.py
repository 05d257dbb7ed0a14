"""WFDB reading (``.hea`` with ``.dat`` or MATLAB v4 ``.mat`` signal files)."""

from __future__ import annotations

import os

import numpy as np
import wfdb

from data_prep.records import RecordError, Signal

_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3}


def read_header(record_path: str) -> wfdb.Record:
    """The header of ``record_path`` (path without extension)."""
    if not os.path.isfile(record_path + ".hea"):
        raise RecordError("header file missing")
    try:
        return wfdb.rdheader(record_path)
    except Exception as error:  # wfdb raises many kinds on malformed headers
        raise RecordError(f"unreadable header ({type(error).__name__}: {error})") from error


def read_signal(record_path: str) -> Signal:
    """The physical signal in mV, (leads, samples), with the header's lead names and rate."""
    try:
        record = wfdb.rdrecord(record_path)
    except Exception as error:
        raise RecordError(f"unreadable signal ({type(error).__name__}: {error})") from error
    data = np.asarray(record.p_signal, dtype=np.float64).T
    units = record.units or ["mV"] * data.shape[0]
    scale = np.array([_UNIT_TO_MV.get(str(u).strip().lower(), 1.0) for u in units])[:, None]
    return Signal(data * scale, float(record.fs), list(record.sig_name))


def header_comments(header: wfdb.Record) -> dict[str, str]:
    """``#Key: value`` comment lines (Challenge style) as a dict with lower-case keys."""
    fields = {}
    for line in header.comments or []:
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip().lower()] = value.strip()
    return fields
