"""RandAugment for ECGs as stateless TensorFlow ops on one z-scored example (leads, samples).

Every op has the signature ``op(x, seed, magnitude, sampling_rate)``: ``seed`` an int shape-[2]
tensor, ``magnitude`` = level / 10 in [0, 1]. Random sizes are drawn uniformly from 0 up to
their maximum, and the maxima scale with the magnitude (T = samples, amplitudes in units of the
z-scored signal):

  shift                zero-padded time shift by s ~ U{-0.1 m T .. 0.1 m T} samples (all leads)
  cutout               zero one span of up to 0.2 m T samples in all leads
  drop                 zero each lead with probability 0.5 m; at least one lead survives
                       (so with a single lead ``drop`` does nothing)
  flip                 negate the signal (x -> -x)
  erase                zero one span of up to 0.2 m T samples in each lead with probability 0.5
  sine                 add a * sin(2 pi f t + phase) to all leads, a up to 0.5 m, f ~ U[0.5, 50] Hz
  partial_sine         the same sinusoid added over one span of up to 0.5 m T samples only
  partial_white_noise  add N(0, sigma^2) noise, sigma up to 0.5 m, over one span of up to 0.5 m T
"""

from __future__ import annotations

import math

import tensorflow as tf

MAX_SHIFT, MAX_CUT, MAX_PARTIAL, MAX_AMPLITUDE = 0.1, 0.2, 0.5, 0.5
SINE_HZ = (0.5, 50.0)


def _uniform(seed, index: int, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, index), minval, maxval)


def _span(seed, samples: int, max_length) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, length) int32 of one span of uniform length in [0, max_length] at a uniform start."""
    length = tf.floor(_uniform(seed, 0) * (tf.floor(tf.cast(max_length, tf.float32)) + 1.0))
    start = tf.floor(_uniform(seed, 1) * (samples - length + 1.0))
    return tf.cast(start, tf.int32), tf.cast(length, tf.int32)


def _span_mask(seed, samples: int, max_length) -> tf.Tensor:
    """(samples,) bool, True on ``_span``."""
    start, length = _span(seed, samples, max_length)
    t = tf.range(samples)
    return (t >= start) & (t < start + length)


def _sinusoid(seed, samples: int, magnitude, sampling_rate: int) -> tf.Tensor:
    amplitude = _uniform(seed, 10) * MAX_AMPLITUDE * magnitude
    freq = _uniform(seed, 11, minval=SINE_HZ[0], maxval=SINE_HZ[1])
    phase = _uniform(seed, 12, maxval=2 * math.pi)
    t = tf.range(samples, dtype=tf.float32) / sampling_rate
    return amplitude * tf.sin(2 * math.pi * freq * t + phase)


def shift(x, seed, magnitude, sampling_rate):
    """Zero-padded shift in time: ``y[:, t] = x[:, t - s]``, zero where ``t - s`` is outside."""
    samples = x.shape[-1]
    limit = tf.round(MAX_SHIFT * magnitude * samples)
    s = tf.cast(tf.floor(_uniform(seed, 0) * (2 * limit + 1)) - limit, tf.int32)
    t = tf.range(samples)
    return tf.where((t - s >= 0) & (t - s < samples), tf.roll(x, s, axis=-1), 0.0)


def cutout(x, seed, magnitude, sampling_rate):
    """Zeroes one random time span in all leads."""
    return tf.where(_span_mask(seed, x.shape[-1], MAX_CUT * magnitude * x.shape[-1]), 0.0, x)


def drop(x, seed, magnitude, sampling_rate):
    """Zeroes whole leads, each with probability 0.5 m; the lead with the largest draw is kept."""
    u = _uniform(seed, 0, shape=[x.shape[0]])
    dropped = (u < 0.5 * magnitude) & (u < tf.reduce_max(u))
    return tf.where(dropped[:, None], 0.0, x)


def flip(x, seed, magnitude, sampling_rate):
    """Negates the signal."""
    return -x


def erase(x, seed, magnitude, sampling_rate):
    """Zeroes one random time span in a random subset of leads (each with probability 0.5)."""
    leads = _uniform(seed, 2, shape=[x.shape[0]]) < 0.5
    span = _span_mask(seed, x.shape[-1], MAX_CUT * magnitude * x.shape[-1])
    return tf.where(leads[:, None] & span[None, :], 0.0, x)


def sine(x, seed, magnitude, sampling_rate):
    """Adds one sinusoid of random amplitude, frequency and phase to all leads."""
    return x + _sinusoid(seed, x.shape[-1], magnitude, sampling_rate)


def partial_sine(x, seed, magnitude, sampling_rate):
    """Adds one random sinusoid to all leads over a random time span only."""
    span = _span_mask(seed, x.shape[-1], MAX_PARTIAL * magnitude * x.shape[-1])
    return x + tf.where(span, _sinusoid(seed, x.shape[-1], magnitude, sampling_rate), 0.0)


def partial_white_noise(x, seed, magnitude, sampling_rate):
    """Adds Gaussian noise (independent per lead and sample) over a random time span."""
    leads, samples = x.shape
    start, length = _span(seed, samples, MAX_PARTIAL * magnitude * samples)
    sigma = _uniform(seed, 3) * MAX_AMPLITUDE * magnitude
    noise = tf.random.stateless_normal([leads, length], tf.random.experimental.stateless_fold_in(seed, 4))
    return x + tf.pad(sigma * noise, [[0, 0], [start, samples - start - length]])


OPS = {op.__name__: op for op in (shift, cutout, drop, flip, erase, sine, partial_sine, partial_white_noise)}


def rand_augment(x: tf.Tensor, seed: tf.Tensor, *, level: int = 10, num_ops: int = 2, prob: float = 0.5,
                 sampling_rate: int = 250) -> tf.Tensor:
    """Applies ``num_ops`` ops drawn uniformly (with replacement) from ``OPS``, each with
    probability ``prob``, at magnitude ``level / 10``."""
    if not 0 <= level <= 10:
        raise ValueError(f"augment level must be in 0..10, got {level}")
    ops = list(OPS.values())
    for i in range(num_ops):
        op_seed = tf.random.experimental.stateless_fold_in(seed, i)
        choice = tf.random.stateless_uniform([], op_seed, 0, len(ops), dtype=tf.int32)
        choice = tf.where(_uniform(op_seed, 100) < prob, choice, len(ops))  # the last branch: no op
        branches = [lambda op=op: op(x, op_seed, level / 10, sampling_rate) for op in ops]
        x = tf.switch_case(choice, branches + [lambda: x])
    return x
