"""Signal processing of the ST-MEM preparation rules: lead mapping, resampling, band filter,
non-overlapping windows, NaN and flat-lead checks."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
from scipy import signal as sps

from data_prep.records import RecordError, Signal
from stmem_jax.leads import canonical_lead_name


@dataclasses.dataclass(frozen=True)
class Processing:
    """Target rate, window length and band filter (None disables a side)."""

    fs: int = 250
    window_s: float = 10.0
    highpass_hz: float | None = 0.67
    lowpass_hz: float | None = 40.0
    filter_order: int = 5

    @property
    def window_samples(self) -> int:
        return int(round(self.fs * self.window_s))

    def filter_settings(self) -> dict | None:
        if self.highpass_hz is None and self.lowpass_hz is None:
            return None
        return {"highpass_hz": self.highpass_hz, "lowpass_hz": self.lowpass_hz, "order": self.filter_order,
                "design": "Butterworth, zero-phase (sosfiltfilt), applied at the target rate"}


def select_leads(sig: Signal, wanted: Sequence[str]) -> np.ndarray:
    """Rows of ``sig`` in the order ``wanted`` (standard names), matched through the alias table."""
    positions = {}
    for row, name in enumerate(sig.lead_names):
        try:
            positions.setdefault(canonical_lead_name(name), row)
        except ValueError:
            continue  # a lead we do not use (e.g. a vector lead): ignored
    missing = [name for name in wanted if name not in positions]
    if missing:
        raise RecordError(f"missing lead(s) {', '.join(missing)} (file has {', '.join(sig.lead_names)})")
    return sig.data[[positions[name] for name in wanted]]


def resample(data: np.ndarray, fs_in: float, fs_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliasing included)."""
    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    if ratio == 1:
        return data.astype(np.float64)
    return sps.resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)


@functools.lru_cache(maxsize=16)
def _butter(order: int, cutoff: float, kind: str, fs: int) -> np.ndarray:
    return sps.butter(order, cutoff, kind, fs=fs, output="sos")


def band_filter(data: np.ndarray, fs: int, proc: Processing) -> np.ndarray:
    """Zero-phase Butterworth high-pass and low-pass (each ``filter_order``) along the last axis."""
    out = data
    if proc.highpass_hz is not None:
        out = sps.sosfiltfilt(_butter(proc.filter_order, proc.highpass_hz, "highpass", fs), out)
    if proc.lowpass_hz is not None:
        out = sps.sosfiltfilt(_butter(proc.filter_order, proc.lowpass_hz, "lowpass", fs), out)
    return out


def make_windows(sig: Signal, wanted: Sequence[str], proc: Processing) -> tuple[list[tuple[int, np.ndarray]], int]:
    """The record cut into non-overlapping windows at the target rate.

    Returns ``([(window index, float32 (leads, window_samples)), ...], windows dropped for NaN)``.
    Raises RecordError for unusable records (missing, all-NaN or flat leads, too short, bad rate).
    """
    if not np.isfinite(sig.fs) or sig.fs < 2 * (proc.lowpass_hz or 0) or sig.fs <= 0:
        raise RecordError(f"unusable sampling rate {sig.fs} Hz")
    data = select_leads(sig, wanted).astype(np.float64)
    nan = np.isnan(data)
    for name, row, row_nan in zip(wanted, data, nan):
        if row_nan.all():
            raise RecordError(f"lead {name} is all NaN")
        if np.nanmax(row) == np.nanmin(row):
            raise RecordError(f"lead {name} is flat")
    duration = data.shape[1] / sig.fs
    if duration < proc.window_s:
        raise RecordError(f"shorter than the window ({duration:.2f} s < {proc.window_s:g} s)")
    resampled = band_filter(resample(np.where(nan, 0.0, data), sig.fs, proc.fs), proc.fs, proc)
    length = proc.window_samples
    native = int(round(proc.window_s * sig.fs))
    nan_any = nan.any(axis=0)
    windows, dropped = [], 0
    for w in range(resampled.shape[1] // length):
        start = int(round(w * proc.window_s * sig.fs))
        if nan_any[start:start + native].any():
            dropped += 1
            continue
        windows.append((w, resampled[:, w * length:(w + 1) * length].astype(np.float32)))
    return windows, dropped
