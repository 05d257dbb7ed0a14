"""The ST-MEM signal recipe: its settings as one dataclass, and the NumPy reference of every step.

Preparation cuts a record into non-overlapping ``window_s`` windows at ``fs``: ``resample="fft"``
(the authors' code) cuts them at the native rate and resamples each window on its own with
``scipy.signal.resample``; ``"polyphase"`` (stmem-jax's) resamples the whole record, then cuts it.
The band filter (zero-phase Butterworth high-pass and low-pass) acts where ``filter_on`` says:
``"crop"`` (the authors'), on each crop after cropping; ``"window"``, on each stored window before
cropping; ``"record"`` (stmem-jax's), on the whole record at preparation (each window with
``fft``). ``flat_leads``: records with a flat lead are kept (the authors') or dropped. The model
sees ``crop_samples``-long crops of a window, each z-scored over leads and time: one random crop
when training, ``eval_crops`` crops at evaluation (probabilities or features averaged). Crop
placement: equally spaced from the first sample to the last (0, 125, 250 for 3 crops of 2250 in
2500), a single crop centred.

``RECIPES`` names the two recipes: ``authors`` (:data:`AUTHORS`, what ``stmem-prepare`` and the
trainers do by default) and ``stmem_jax`` (``Recipe()``: a recipe saved before these fields existed
means it). ``stmem-prepare`` writes the recipe into ``manifest.json``; the input pipeline reads it
there and runs the crop, filter and z-score steps as TensorFlow ops (``stmem_jax.data.transforms``,
tested against these functions); ``api`` and ``stmem-embed`` apply these functions to raw
recordings.
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


RESAMPLING = ("fft", "polyphase")
FILTER_PLACES = ("crop", "window", "record")
FLAT_LEADS = ("keep", "drop")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Sampling rate, window, band filter (None disables a side), crop length, evaluation crops, the
    longest gap of missing (non-finite) samples that is interpolated rather than left out, how
    windows are resampled, where the band filter acts and whether records with a flat lead are kept
    (module docstring; the defaults of these three are stmem-jax's: a recipe saved before they
    existed means them; :data:`AUTHORS` is the authors' recipe), and the rate the windows are
    prepared at when the model's rate ``fs`` is reached by resampling prepared windows
    (``prepared_fs``: a model trained with ``data.sample_rate``, e.g. CPC at 100 Hz on 250 Hz
    shards; 0: the windows are prepared at ``fs``)."""

    fs: int = 250
    window_s: float = 10.0
    highpass_hz: float | None = 0.67
    lowpass_hz: float | None = 40.0
    filter_order: int = 5
    crop_samples: int = 2250
    eval_crops: int = 3
    max_gap_s: float = 0.0
    resample: str = "polyphase"
    filter_on: str = "record"
    flat_leads: str = "drop"
    prepared_fs: int = 0

    def __post_init__(self):
        problems = []
        for name, allowed in (("resample", RESAMPLING), ("filter_on", FILTER_PLACES), ("flat_leads", FLAT_LEADS)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not (isinstance(self.fs, int) and self.fs > 0):
            problems.append(f"sampling rate must be a positive whole number of Hz, got {self.fs!r}")
        if not (isinstance(self.prepared_fs, int) and self.prepared_fs >= 0):
            problems.append(f"prepared_fs must be 0 or a positive whole number of Hz, got {self.prepared_fs!r}")
        if not (math.isfinite(self.window_s) and self.window_s > 0):
            problems.append(f"window must last more than 0 s, got {self.window_s!r}")
        rate = (self.prepared_fs or self.fs) if self.filter_on == "record" else self.fs  # where the filter acts
        for name in ("highpass_hz", "lowpass_hz"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value < rate / 2):
                problems.append(f"{name} must lie between 0 and half the sampling rate ({rate / 2:g} Hz), "
                                f"got {value!r}")
        if self.filter_order < 1:
            problems.append(f"filter_order must be at least 1, got {self.filter_order}")
        if not (math.isfinite(self.max_gap_s) and self.max_gap_s >= 0):
            problems.append(f"max_gap_s must be 0 or more seconds, got {self.max_gap_s!r}")
        if self.crop_samples < 1 or self.eval_crops < 1:
            problems.append(f"crop_samples and eval_crops must be positive, got {self.crop_samples}, "
                            f"{self.eval_crops}")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def window_samples(self) -> int:
        return int(round(self.fs * self.window_s))

    def prepared(self) -> Recipe:
        """The recipe of the prepared windows: at ``prepared_fs`` (this recipe when 0)."""
        return dataclasses.replace(self, fs=self.prepared_fs, prepared_fs=0) if self.prepared_fs else self

    @property
    def filtered(self) -> bool:
        return self.highpass_hz is not None or self.lowpass_hz is not None

    @property
    def prefiltered(self) -> bool:
        """Whether preparation band-filtered the stored windows (``filter_on="record"`` with a band)."""
        return self.filter_on == "record" and self.filtered

    @property
    def name(self) -> str:
        """``authors`` or ``stmem_jax`` when resampling, filter placement and flat leads are that
        recipe's and there is a band filter, else ``custom``."""
        for name, recipe in RECIPES.items():
            if self.filtered and (self.resample, self.filter_on, self.flat_leads) == \
                    (recipe.resample, recipe.filter_on, recipe.flat_leads):
                return name
        return "custom"

    def filter_settings(self) -> dict | None:
        """The manifest's description of the band filter applied at preparation (None when the stored
        windows are not filtered)."""
        if not self.prefiltered:
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


AUTHORS = Recipe(resample="fft", filter_on="crop", flat_leads="keep")
RECIPES = {"authors": AUTHORS, "stmem_jax": Recipe()}


def authors_for(model) -> Recipe:
    """The authors' recipe at ``model``'s crop length (``seq_len``): the input of a model that says
    nothing of its own (a public ``.pth``, variables not loaded by ``api``)."""
    return dataclasses.replace(AUTHORS, crop_samples=model.seq_len)


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


def resample(data: np.ndarray, fs_in: float, fs_out: int, method: str = "polyphase") -> np.ndarray:
    """Resampling along the last axis, float64: ``polyphase`` (anti-aliasing included) or ``fft``
    (the Fourier method, ``scipy.signal.resample``, to floor(samples x fs_out / fs_in) samples)."""
    from scipy import signal as sps

    ratio = Fraction(fs_out) / Fraction(fs_in).limit_denominator(1000)
    if ratio == 1:
        return data.astype(np.float64)
    if method == "fft":
        return sps.resample(np.asarray(data, np.float64), math.floor(data.shape[-1] * ratio), axis=-1)
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


def fill_gaps(data: np.ndarray, fs: float, max_gap_s: float | None = None) -> np.ndarray:
    """``data`` (..., samples) with its runs of non-finite samples replaced by the straight line
    between the finite samples around them: those between finite samples lasting at most
    ``max_gap_s``, or with None every run (runs at an edge then hold the nearest finite value)."""
    bad = ~np.isfinite(data)
    limit = None if max_gap_s is None else int(np.floor(max_gap_s * fs + 1e-9))
    if not bad.any() or limit == 0:
        return data
    out = np.array(data, np.float64)
    positions = np.arange(out.shape[-1])
    for row, row_bad in zip(out.reshape(-1, out.shape[-1]), bad.reshape(-1, out.shape[-1])):
        if row_bad.all() or not row_bad.any():
            continue
        fill = row_bad.copy()
        if limit is not None:
            for start, stop in _runs(row_bad):
                fill[start:stop] = stop - start <= limit and start > 0 and stop < len(row)
        row[fill] = np.interp(positions[fill], positions[~row_bad], row[~row_bad])
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the runs of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def make_windows(sig: Signal, wanted: Sequence[str], recipe: Recipe
                 ) -> tuple[list[tuple[int, np.ndarray]], int]:
    """The record cut into non-overlapping windows at the recipe's rate, as ``recipe.resample``
    says: ``fft``, windows of ``window_s`` at the native rate, each resampled on its own; ``polyphase``,
    the record resampled, then cut. Band-filtered here only with ``filter_on="record"`` (the whole
    record; with ``fft`` each window). With ``prepared_fs`` the windows are prepared at that rate,
    then resampled to ``fs`` (as the input pipeline resamples them).

    Gaps of non-finite samples up to ``recipe.max_gap_s`` are interpolated and kept; windows holding
    longer gaps are dropped, as are windows whose values overflow float32. With ``polyphase`` the
    longer gaps are bridged by a straight line for resampling and filtering only (a zero fill would
    ring through the filter into the windows around it).
    Returns ``([(window index, float32 (leads, window_samples)), ...], windows dropped for gaps)``.
    Raises RecordError for unusable records (missing or non-finite leads, flat leads unless
    ``flat_leads="keep"``, too short, bad rate).
    """
    if not np.isfinite(sig.fs) or sig.fs < 2 * (recipe.lowpass_hz or 0) or sig.fs <= 0:
        raise RecordError(f"unusable sampling rate {sig.fs} Hz")
    data = fill_gaps(select_leads(sig, wanted).astype(np.float64), sig.fs, recipe.max_gap_s)
    bad = ~np.isfinite(data)
    for name, row, row_bad in zip(wanted, data, bad):
        if row_bad.all():
            raise RecordError(f"lead {name} has no finite sample")
        if recipe.flat_leads == "drop" and row[~row_bad].max() == row[~row_bad].min():
            raise RecordError(f"lead {name} is flat")
    duration = data.shape[1] / sig.fs
    if duration < recipe.window_s:
        raise RecordError(f"shorter than the window ({duration:.2f} s < {recipe.window_s:g} s)")
    prepared = recipe.prepared()
    length = prepared.window_samples
    native = int(round(recipe.window_s * sig.fs))
    missing = bad.any(axis=0)
    polyphase = recipe.resample == "polyphase"
    prefilter = functools.partial(band_filter, recipe=prepared) if recipe.prefiltered else (lambda x: x)
    if polyphase:
        resampled = prefilter(resample(fill_gaps(data, sig.fs), sig.fs, prepared.fs))
    windows, dropped = [], 0
    for w in range(resampled.shape[1] // length if polyphase else data.shape[1] // native):
        start = int(round(w * recipe.window_s * sig.fs)) if polyphase else w * native
        if missing[start:start + native].any():  # gaps
            dropped += 1
            continue
        window = resampled[:, w * length:(w + 1) * length] if polyphase else \
            prefilter(_fft_window(data[:, start:start + native], length))
        with np.errstate(over="ignore"):
            window = window.astype(np.float32)
        if not np.isfinite(window).all():  # beyond float32
            dropped += 1
            continue
        if prepared is not recipe:  # prepared windows resampled to the model's rate (as the pipeline does)
            window = resample(window, prepared.fs, recipe.fs, recipe.resample).astype(np.float32)
        windows.append((w, window))
    return windows, dropped


def _fft_window(window: np.ndarray, samples: int) -> np.ndarray:
    """One native-rate window resampled to ``samples`` by the Fourier method (``scipy.signal.resample``;
    ``samples`` is floor(native samples x fs / native rate) at every whole-number rate)."""
    from scipy import signal as sps

    return window if window.shape[-1] == samples else sps.resample(window, samples, axis=-1)


def window_inputs(sig: Signal, wanted: Sequence[str], recipe: Recipe, *, crop_samples: int | None = None,
                  count: int | None = None, per_window: bool = False) -> list[tuple[int, np.ndarray]]:
    """``(window index, crops (count, leads, crop_samples))`` of the record's first usable window, or of
    every window with ``per_window``, as stmem-prepare cuts them (:func:`make_windows`) and the input
    pipeline crops, filters and z-scores them (:func:`window_crops`)."""
    windows, _ = make_windows(sig, wanted, recipe)
    if not windows:
        raise RecordError("no window without NaN or infinite samples")
    return [(index, window_crops(window, recipe, crop_samples, count))
            for index, window in (windows if per_window else windows[:1])]


def window_crops(window: np.ndarray, recipe: Recipe, crop_samples: int | None = None, count: int | None = None
                 ) -> np.ndarray:
    """A window at the recipe's rate (leads, samples) -> its ``count`` crops (count, leads, crop_samples)
    as the model sees them: band-filtered where ``recipe.filter_on`` says (``window``: before
    cropping, ``crop``: each crop; ``record``: done before), each z-scored."""
    if recipe.filter_on == "window":
        window = band_filter(window, recipe)
    cut = crops(window, crop_samples or recipe.crop_samples, count or recipe.eval_crops)
    return zscore(band_filter(cut, recipe) if recipe.filter_on == "crop" else cut)


def model_inputs(ecgs: np.ndarray, fs: float, recipe: Recipe = AUTHORS, *, crop_samples: int | None = None,
                 count: int | None = None, lead_names: Sequence[str] | None = None) -> np.ndarray:
    """Recordings (B, C, T) or (C, T) in mV at ``fs`` Hz -> model inputs (B, count, C, crop_samples)
    exactly as the input pipeline makes them from a window under ``recipe``: gaps up to
    ``recipe.max_gap_s`` interpolated, each recording resampled to the recipe's rate as one window
    (``recipe.resample``; with ``prepared_fs``, to that rate first, as prepared, then to ``fs``),
    band-filtered where ``recipe.filter_on`` says (``record``: at the prepared rate, ``window``: the
    whole recording; ``crop``: each crop), cut into ``count`` crops (default: the recipe's
    evaluation crops), each z-scored. A recipe without a band filter filters nothing. Bad input (a
    rate that is not a positive number, a (T, C) array, a non-finite sample left) is a ValueError
    naming the example and lead (``lead_names``, else the row)."""
    ecgs = np.asarray(ecgs, np.float64)
    if ecgs.ndim == 2:
        ecgs = ecgs[None]
    if ecgs.ndim != 3:
        raise ValueError(f"expected ECGs of shape (batch, leads, samples), got {ecgs.shape}")
    if ecgs.shape[1] > ecgs.shape[2] or ecgs.shape[1] > 12:
        raise ValueError(f"expected ECGs of shape (batch, leads, samples), got {ecgs.shape}: {ecgs.shape[1]} leads "
                         f"of {ecgs.shape[2]} samples (transposed?)")
    if not (isinstance(fs, (int, float, np.number)) and math.isfinite(fs) and fs > 0):
        raise ValueError(f"sampling rate must be a positive number of Hz, got {fs!r}")
    if count is not None and count < 1:
        raise ValueError(f"crops must be at least 1, got {count}")
    ecgs = fill_gaps(ecgs, fs, recipe.max_gap_s)
    bad = ~np.isfinite(ecgs)
    if bad.any():
        b, c = (int(i) for i in np.argwhere(bad.any(axis=2))[0])
        name = lead_names[c] if lead_names is not None and c < len(lead_names) else f"row {c}"
        first = int(np.flatnonzero(bad[b, c])[0])
        raise ValueError(f"ECG {b}, lead {name}: {int(bad[b, c].sum())} NaN or infinite sample(s), the first at "
                         f"{first / fs:.3f} s; gaps up to Recipe.max_gap_s (now {recipe.max_gap_s:g} s) are "
                         f"interpolated, e.g. recipe=Recipe(max_gap_s=0.1)")
    length = crop_samples or recipe.crop_samples
    prepared = recipe.prepared()
    signal = resample(ecgs, fs, prepared.fs, recipe.resample)
    if recipe.filter_on == "record":
        signal = band_filter(signal, prepared)
    signal = resample(signal, prepared.fs, recipe.fs, recipe.resample)
    if signal.shape[-1] < length:
        raise ValueError(f"ECGs last {signal.shape[-1] / recipe.fs:.2f} s at {recipe.fs} Hz; the model needs "
                         f"{length / recipe.fs:.2f} s")
    return window_crops(signal, recipe, length, count)
