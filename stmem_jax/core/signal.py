"""A loaded ECG record and the error that makes one unusable."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Signal:
    """A loaded record: (leads, samples) in mV, its sampling rate, the file's lead names and the
    patient id the file names ("" when it names none)."""

    data: np.ndarray
    fs: float
    lead_names: list[str]
    patient_id: str = ""


EXIT_SKIPPED = 3  # exit status of a command that finished but left out unusable records (it names them)


class RecordError(Exception):
    """A record cannot be used; the message is the reason written to the skip list."""
