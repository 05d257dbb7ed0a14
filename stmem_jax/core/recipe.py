"""The ST-MEM signal recipe: its settings as one dataclass, and the NumPy reference of every step.

Preparation resamples a record to ``fs``, band-filters it (zero-phase Butterworth high-pass and
low-pass) and cuts it into non-overlapping ``window_s`` windows. The model sees
``crop_samples``-long crops of a window, each z-scored over leads and time: one random crop when
training, ``eval_crops`` crops at evaluation (probabilities or features averaged). Crop placement:
equally spaced from the first sample to the last (0, 125, 250 for 3 crops of 2250 in 2500), a
single crop centred.

``stmem-prepare`` writes the recipe into ``manifest.json``; the input pipeline reads it there and
runs the crop and z-score steps as TensorFlow ops (``stmem_jax.data.transforms``, tested against
these functions); ``api`` and ``stmem-embed`` apply these functions to raw recordings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from stmem_jax.core.leads import canonical_lead_name
from stmem_jax.core.signal import RecordError, Signal


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Sampling rate, window, band filter (None disables a side), crop length and evaluation crops."""

    fs: int = 250
    window_s: float = 10.0
    highpass_hz: float | None = 0.67
    lowpass_hz: float | None = 40.0
    filter_order: int = 5
    crop_samples: int = 2250
    eval_crops: int = 3

    def __post_init__(self):
        problems = []
        if not (isinstance(self.fs, int) and self.fs > 0):
            problems.append(f"sampling rate must be a positive whole number of Hz, got {self.fs!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            problems.append(f"window must last more than 0 s, got {self.window_s!r}")
        for name in ("highpass_hz", "lowpass_hz"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value < self.fs / 2):
                problems.append(f"{name} must lie between 0 and half the sampling rate ({self.fs / 2:g} Hz), "
                                f"got {value!r}")
        if self.filter_order < 1:
            problems.append(f"filter_order must be at least 1, got {self.filter_order}")
        if self.crop_samples < 1 or self.eval_crops < 1:
            problems.append(f"crop_samples and eval_crops must be positive, got {self.crop_samples}, "
                            f"{self.eval_crops}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def window_samples(self) -> int:
        return int(round(self.fs * self.window_s))

    @property
    def filtered(self) -> bool:
        return self.highpass_hz is not None or self.lowpass_hz is not None

    def filter_settings(self) -> dict | None:
        """The manifest's description of the band filter (None when unfiltered)."""
        if not self.filtered:
            return None
        return {"highpass_hz": self.highpass_hz, "lowpass_hz": self.lowpass_hz, "order": self.filter_order,
                "design": "Butterworth, zero-phase (sosfiltfilt), applied at the target rate"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_manifest(cls, manifest: dict[str, Any]) -> Recipe:
        """The recipe a prepared dataset was made with; manifests written before it was recorded give
        theirs from the rate, window and filter they list (crops at the defaults)."""
        if "recipe" in manifest:
            return cls(**manifest["recipe"])
        band = manifest.get("filter") or {}
        return cls(fs=int(manifest["sampling_rate"]), window_s=float(manifest["window_s"]),
                   highpass_hz=band.get("highpass_hz"), lowpass_hz=band.get("lowpass_hz"),
                   filter_order=int(band.get("order", cls.filter_order)))

    def with_band_of(self, other: Recipe) -> Recipe:
        """This recipe with ``other``'s band filter (to filter unfiltered data on the fly)."""
        return dataclasses.replace(self, highpass_hz=other.highpass_hz, lowpass_hz=other.lowpass_hz,
                                   filter_order=other.filter_order)


def crop_starts(total: int, length: int, count: int) -> tuple[int, ...]:
    """Starts of ``count`` crops of ``length`` samples in ``total``: equally spaced from 0 to
    ``total - length`` (rounded), one crop centred."""
    if length > total:
        raise ValueError(f"crop of {length} samples is longer than the {total}-sample window")
    if count == 1:
        return ((total - length) // 2,)
    return tuple(int(round(s)) for s in np.linspace(0, total - length, count))


def crops(x: np.ndarray, length: int, count: int) -> np.ndarray:
    """(..., leads, samples) -> (..., count, leads, length): the crops at :func:`crop_starts`."""
    return np.stack([x[..., s:s + length] for s in crop_starts(x.shape[-1], length, count)], axis=-3)


def zscore(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last two axes together (population std), float32; 0 where std is 0."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    std = x.std(axis=(-2, -1), keepdims=True)
    return np.divide(x - mean, std, out=np.zeros_like(x), where=std > 0).astype(np.float32)


def resample(data: np.ndarray, fs_in: float, fs_out: int) -> np.ndarray:
    """Polyphase resampling along the last axis (anti-aliasing included), float64."""
    from scipy import signal as sps

    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    if ratio == 1:
        return data.astype(np.float64)
    return sps.resample_poly(data, ratio.numerator, ratio.denominator, axis=-1)


@functools.lru_cache(maxsize=16)
def butter(order: int, cutoff: float, kind: str, fs: int) -> np.ndarray:
    """Second-order sections of a Butterworth filter."""
    from scipy import signal as sps

    return sps.butter(order, cutoff, kind, fs=fs, output="sos")


def band_filter(data: np.ndarray, recipe: Recipe) -> np.ndarray:
    """The recipe's zero-phase high-pass, then low-pass, along the last axis (at ``recipe.fs``)."""
    from scipy import signal as sps

    out = data
    if recipe.highpass_hz is not None:
        out = sps.sosfiltfilt(butter(recipe.filter_order, recipe.highpass_hz, "highpass", recipe.fs), out)
    if recipe.lowpass_hz is not None:
        out = sps.sosfiltfilt(butter(recipe.filter_order, recipe.lowpass_hz, "lowpass", recipe.fs), out)
    return out


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


def make_windows(sig: Signal, wanted: Sequence[str], recipe: Recipe
                 ) -> tuple[list[tuple[int, np.ndarray]], int]:
    """The record cut into non-overlapping windows at the recipe's rate, filtered.

    Returns ``([(window index, float32 (leads, window_samples)), ...], windows dropped for NaN)``.
    Raises RecordError for unusable records (missing, all-NaN or flat leads, too short, bad rate).
    """
    if not np.isfinite(sig.fs) or sig.fs < 2 * (recipe.lowpass_hz or 0) or sig.fs <= 0:
        raise RecordError(f"unusable sampling rate {sig.fs} Hz")
    data = select_leads(sig, wanted).astype(np.float64)
    nan = np.isnan(data)
    for name, row, row_nan in zip(wanted, data, nan):
        if row_nan.all():
            raise RecordError(f"lead {name} is all NaN")
        if np.nanmax(row) == np.nanmin(row):
            raise RecordError(f"lead {name} is flat")
    duration = data.shape[1] / sig.fs
    if duration < recipe.window_s:
        raise RecordError(f"shorter than the window ({duration:.2f} s < {recipe.window_s:g} s)")
    resampled = band_filter(resample(np.where(nan, 0.0, data), sig.fs, recipe.fs), recipe)
    length = recipe.window_samples
    native = int(round(recipe.window_s * sig.fs))
    nan_any = nan.any(axis=0)
    windows, dropped = [], 0
    for w in range(resampled.shape[1] // length):
        start = int(round(w * recipe.window_s * sig.fs))
        if nan_any[start:start + native].any():
            dropped += 1
            continue
        windows.append((w, resampled[:, w * length:(w + 1) * length].astype(np.float32)))
    return windows, dropped


def window_inputs(sig: Signal, wanted: Sequence[str], recipe: Recipe, *, crop_samples: int | None = None,
                  count: int | None = None, per_window: bool = False) -> list[tuple[int, np.ndarray]]:
    """``(window index, z-scored crops (count, leads, crop_samples))`` of the record's first usable
    window, or of every window with ``per_window``, as stmem-prepare cuts them (:func:`make_windows`)."""
    windows, _ = make_windows(sig, wanted, recipe)
    if not windows:
        raise RecordError("no window without NaN")
    return [(index, zscore(crops(window, crop_samples or recipe.crop_samples, count or recipe.eval_crops)))
            for index, window in (windows if per_window else windows[:1])]


def model_inputs(ecgs: np.ndarray, fs: float, recipe: Recipe = Recipe(), *, crop_samples: int | None = None,
                 count: int | None = None, bandpass: bool = True) -> np.ndarray:
    """Recordings (B, C, T) or (C, T) in mV at ``fs`` Hz -> model inputs (B, count, C, crop_samples):
    resampled to the recipe's rate, band-filtered, cut into ``count`` crops (default: the recipe's
    evaluation crops), each z-scored."""
    ecgs = np.asarray(ecgs, np.float64)
    if ecgs.ndim == 2:
        ecgs = ecgs[None]
    if ecgs.ndim != 3:
        raise ValueError(f"expected ECGs of shape (batch, leads, samples), got {ecgs.shape}")
    length = crop_samples or recipe.crop_samples
    signal = resample(ecgs, fs, recipe.fs)
    if bandpass:
        signal = band_filter(signal, recipe)
    if signal.shape[-1] < length:
        raise ValueError(f"ECGs last {signal.shape[-1] / recipe.fs:.2f} s at {recipe.fs} Hz; the model needs "
                         f"{length / recipe.fs:.2f} s")
    return zscore(crops(signal, length, count or recipe.eval_crops))
