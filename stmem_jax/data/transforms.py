"""Per-example signal transforms as TensorFlow ops: crops, z-score and the band filter, the
recipe's steps (``stmem_jax.core.recipe`` holds their NumPy reference and the crop placement).

A signal is a float32 tensor (leads, samples); seeds are int shape-[2] tensors for
``tf.random.stateless_*``.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

from stmem_jax.core import recipe as recipe_lib
from stmem_jax.core.recipe import Recipe, crop_starts


def random_crop(x: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
    """A crop of ``length`` samples starting uniformly in [0, samples - length]."""
    start = tf.random.stateless_uniform([], seed, 0, x.shape[-1] - length + 1, dtype=tf.int32)
    return tf.slice(x, [0, start], [x.shape[0], length])


def fixed_crops(x: tf.Tensor, length: int, count: int) -> tf.Tensor:
    """(count, leads, length): the crops at ``crop_starts``."""
    return tf.stack([x[:, s:s + length] for s in crop_starts(x.shape[-1], length, count)])


def split_segments(x: tf.Tensor, length: int, seed: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
    """Two adjacent, non-overlapping ``length``-sample segments: a random crop of ``2 * length``
    (centred without ``seed``) cut in halves."""
    both = random_crop(x, 2 * length, seed) if seed is not None else fixed_crops(x, 2 * length, 1)[0]
    return both[:, :length], both[:, length:]


def resample(x: tf.Tensor, fs_in: int, fs_out: int, method: str = "polyphase") -> tf.Tensor:
    """``recipe.resample`` (``polyphase`` or ``fft``) of a fixed-length window, as one matmul."""
    return tf.matmul(x, tf.constant(resample_operator(x.shape[-1], fs_in, fs_out, method)))


@functools.lru_cache(maxsize=8)
def resample_operator(samples: int, fs_in: int, fs_out: int, method: str = "polyphase") -> np.ndarray:
    """(samples, resampled) float32: row i is the resampled unit impulse at i (a NumPy array: a
    cached tensor would belong to the first graph that made it)."""
    return recipe_lib.resample(np.eye(samples), fs_in, fs_out, method).astype(np.float32)


def zscore(x: tf.Tensor) -> tf.Tensor:
    """(x - mean) / std over the last two axes together (population std); 0 where std is 0."""
    mean = tf.reduce_mean(x, axis=(-2, -1), keepdims=True)
    std = tf.math.reduce_std(x, axis=(-2, -1), keepdims=True)
    return tf.math.divide_no_nan(x - mean, std)


def band_filter(x: tf.Tensor, recipe: Recipe) -> tf.Tensor:
    """The recipe's high-pass then low-pass (each a zero-phase Butterworth, at ``recipe.fs``) along the
    last axis of (..., samples) (a window, a crop or a stack of crops), exactly
    as ``recipe.band_filter`` (``scipy.signal.sosfiltfilt``: odd padding, steady-state initial state)
    computes them.

    ``sosfiltfilt`` is a linear map of a fixed-length window, ``y = x @ M``. ``M`` is a symmetric
    Toeplitz part (the ideal zero-phase filter, kernel = inverse FFT of |H|^2) plus the edge
    handling, which has rank about 20; the first is applied as an FFT convolution, the second as
    two thin matmuls (``band_filter_operator``). Agrees with scipy to float32 rounding.
    """
    spectrum, left, right = (tf.constant(a) for a in band_filter_operator(recipe, x.shape[-1]))
    n = x.shape[-1]
    conv = tf.signal.irfft(tf.signal.rfft(x, [2 * n]) * spectrum, [2 * n])[..., :n]
    return conv + tf.matmul(tf.matmul(x, left), right)


@functools.lru_cache(maxsize=8)
def band_filter_operator(recipe: Recipe, samples: int, rank: int = 32):
    """(rfft of the circular Toeplitz kernel, edge part as ``left @ right``) as float32 NumPy arrays (a
    cached tensor would belong to the first graph that made it)."""
    from scipy import signal as sps

    n, fs = samples, recipe.fs
    operator = recipe_lib.band_filter(np.eye(n), recipe)  # row i: response to e_i
    grid = 1 << 16
    freqs = np.fft.rfftfreq(grid, 1 / fs)
    response = np.ones(len(freqs))
    for cutoff, kind in ((recipe.highpass_hz, "highpass"), (recipe.lowpass_hz, "lowpass")):
        if cutoff is not None:
            response = response * np.abs(sps.sosfreqz(recipe_lib.butter(recipe.filter_order, cutoff, kind, fs), worN=freqs,
                                                      fs=fs)[1]) ** 2
    kernel = np.fft.irfft(response, grid)  # symmetric: kernel[-k] = kernel[k]
    lags = np.arange(n)
    toeplitz = kernel[np.abs(lags[:, None] - lags[None, :])]
    circular = np.concatenate([kernel[:n], kernel[n:0:-1]])  # lags 0..n-1, then -n..-1
    edge = operator - toeplitz
    basis, _ = np.linalg.qr(edge @ np.random.default_rng(0).standard_normal((n, rank)))
    return (np.fft.rfft(circular).real.astype(np.complex64), basis.astype(np.float32),
            (basis.T @ edge).astype(np.float32))
