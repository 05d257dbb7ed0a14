"""A loaded ECG record and the error that makes one unusable."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class Signal:
    """A loaded record: (leads, samples) in mV, its sampling rate and the file's lead names."""

    data: np.ndarray
    fs: float
    lead_names: list[str]


class RecordError(Exception):
    """A record cannot be used; the message is the reason written to the skip list."""
