"""RandAugment for ECGs as stateless TensorFlow ops on one z-scored example (leads, samples):
:func:`rand_augment`, in two variants (:data:`VARIANTS`) of the same eight ops (:data:`OP_NAMES`).

``authors`` (the default) is the ST-MEM authors' downstream RandAugment (the project's spec,
recipe.md section 2): per example ``num_ops`` distinct ops drawn uniformly without replacement,
each then applied with probability ``prob``, independently, in the order drawn. At s = level / 10,
with T samples, C leads, U(a, b) a uniform real and randint(a, b) a uniform integer in [a, b):

  shift                d = -1 or +1 (equal odds), k = floor(U(0, 0.3 s) T): the crop moves k samples
                       (+1: later in time); the k samples left empty become 0
  cutout               k = floor(U(0, 0.3 s) T), start = randint(0, T - k): [start, start + k) -> 0 in all leads
  drop                 k = randint(0, floor(0.3 s T)) distinct time points, drawn without replacement,
                       -> 0 in all leads (scattered samples, not leads; k = 0 at s = 0)
  flip                 x -> -x
  erase                one lead, drawn uniformly, -> 0 (at any level): the only op that zeroes a lead
  sine                 + 0.3 s sin(2 pi t / p), t = n / T, p = 0.5 / s, in all leads: one fixed wander,
                       phase 0 (at s = 1: 2 cycles per crop, 0.22 Hz for 9 s)
  partial_sine         the sine's first k samples added at [start, start + k), k and start as cutout's
  partial_white_noise  noise 0.3 s N(0, 1) per lead and sample, its first k samples added at
                       [start, start + k), k and start as cutout's

Each of these is a pure function ``op(x, s, **draws)`` of the example, s and its random draws
(:data:`DRAWS`: uniforms in [0, 1), a permutation of the time points, standard normal noise), which
:func:`draw` makes from a seed; ``shift``'s d is +1 when its ``direction`` draw is below 0.5.

``stmem_jax`` (our earlier design, an option): ``num_ops`` ops drawn uniformly with replacement,
each applied with probability ``prob``; every op ``ours_<name>(x, seed, magnitude, sampling_rate)``
draws its sizes uniformly from 0 up to a maximum that scales with the magnitude m = level / 10
(amplitudes in units of the z-scored signal):

  shift                zero-padded time shift by s ~ U{-0.1 m T .. 0.1 m T} samples (all leads)
  cutout               zero one span of up to 0.2 m T samples in all leads
  drop                 zero each lead with probability 0.5 m; at least one lead survives
                       (so with a single lead ``drop`` does nothing)
  flip                 negate the signal (x -> -x)
  erase                zero one span of up to 0.2 m T samples in each lead with probability 0.5
  sine                 add a * sin(2 pi f t + phase) to all leads, a up to 0.5 m, f ~ U[0.5, 50] Hz
  partial_sine         the same sinusoid added over one span of up to 0.5 m T samples only
  partial_white_noise  add N(0, sigma^2) noise, sigma up to 0.5 m, over one span of up to 0.5 m T

It zeroes whole leads (``drop``: about half of them) several times as often as the authors' ops do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

OP_NAMES = ("shift", "cutout", "drop", "flip", "erase", "sine", "partial_sine", "partial_white_noise")
VARIANTS = ("authors", "stmem_jax")

AUTHORS_FRACTION = 0.3   # the authors' sizes: 0.3 s T samples, amplitudes 0.3 s
AUTHORS_PERIOD = 0.5     # sine's period p = 0.5 / s, in units of the crop
MAX_SHIFT, MAX_CUT, MAX_PARTIAL, MAX_AMPLITUDE = 0.1, 0.2, 0.5, 0.5   # stmem_jax's maxima
SINE_HZ = (0.5, 50.0)
CHOICE = 1000  # fold-in index of the authors' op choice (below it: the ops' own seeds)


def _uniform(seed, index: int, shape=(), minval=0.0, maxval=1.0):
    return tf.random.stateless_uniform(shape, tf.random.experimental.stateless_fold_in(seed, index), minval, maxval)


# ---- variant "authors": pure ops of (x, s, draws) ----

def _floor(u, scale) -> tf.Tensor:
    """floor(u * scale) as int32: with u uniform in [0, 1), a uniform integer in [0, scale) (integer scale)."""
    return tf.cast(tf.floor(tf.cast(u, tf.float32) * tf.cast(scale, tf.float32)), tf.int32)


def _authors_span(samples: int, s: float, length, start) -> tuple[tf.Tensor, tf.Tensor]:
    """(start, k): k = floor(U(0, 0.3 s) T), start = randint(0, T - k), from uniforms ``length``, ``start``."""
    k = _floor(length, AUTHORS_FRACTION * s * samples)
    return _floor(start, samples - k), k


def _authors_wave(samples: int, s: float) -> np.ndarray:
    """The sine op's wander, (samples,): 0.3 s sin(2 pi t s / 0.5) at t = n / T."""
    t = np.arange(samples) / samples
    return (AUTHORS_FRACTION * s * np.sin(2 * np.pi * t * s / AUTHORS_PERIOD)).astype(np.float32)


def shift(x, s, direction, length):
    """Moves the crop k samples later (``direction`` < 0.5) or earlier, zero-filled."""
    samples = x.shape[-1]
    k = _floor(length, AUTHORS_FRACTION * s * samples)
    k = tf.where(direction < 0.5, k, -k)
    t = tf.range(samples)
    return tf.where((t - k >= 0) & (t - k < samples), tf.roll(x, k, axis=-1), 0.0)


def cutout(x, s, length, start):
    """Zeroes one span of time points in every lead."""
    first, k = _authors_span(x.shape[-1], s, length, start)
    t = tf.range(x.shape[-1])
    return tf.where((t >= first) & (t < first + k), 0.0, x)


def drop(x, s, count, order):
    """Zeroes in every lead the k time points ranked first by ``order`` (a random permutation of the
    time points: a uniformly drawn set of k distinct ones)."""
    k = _floor(count, math.floor(AUTHORS_FRACTION * s * x.shape[-1]))
    return tf.where(tf.cast(order, tf.int32) < k, 0.0, x)


def flip(x, s):
    """Negates the signal."""
    return -x


def erase(x, s, lead):
    """Zeroes one whole lead, ``floor(lead * C)``."""
    return tf.where((tf.range(x.shape[0]) == _floor(lead, x.shape[0]))[:, None], 0.0, x)


def sine(x, s):
    """Adds the fixed wander to every lead."""
    return x + _authors_wave(x.shape[-1], s)


def partial_sine(x, s, length, start):
    """Adds the wander's first k samples at [start, start + k) in every lead."""
    samples = x.shape[-1]
    first, k = _authors_span(samples, s, length, start)
    return x + tf.pad(tf.constant(_authors_wave(samples, s))[:k], [[first, samples - first - k]])


def partial_white_noise(x, s, length, start, noise):
    """Adds the first k samples of ``0.3 s noise`` (standard normal per lead and sample, k or more
    samples) at [start, start + k)."""
    samples = x.shape[-1]
    first, k = _authors_span(samples, s, length, start)
    part = AUTHORS_FRACTION * s * tf.cast(noise, tf.float32)[:, :k]
    return x + tf.pad(part, [[0, 0], [first, samples - first - k]])


AUTHORS = {op.__name__: op for op in (shift, cutout, drop, flip, erase, sine, partial_sine, partial_white_noise)}

# each authors' op's draws: argument -> "uniform" (one in [0, 1)), "permutation" (a random permutation of
# the time points 0 .. T-1) or "noise" (standard normal, (C, floor(0.3 s T)): as many samples as k can be)
DRAWS = {"shift": {"direction": "uniform", "length": "uniform"}, "cutout": {"length": "uniform", "start": "uniform"},
         "drop": {"count": "uniform", "order": "permutation"}, "flip": {}, "erase": {"lead": "uniform"}, "sine": {},
         "partial_sine": {"length": "uniform", "start": "uniform"},
         "partial_white_noise": {"length": "uniform", "start": "uniform", "noise": "noise"}}


def draw(name: str, seed, shape, s: float) -> dict[str, tf.Tensor]:
    """The draws (:data:`DRAWS`) of the authors' op ``name`` for an example of ``shape`` (leads,
    samples) at s = level / 10."""
    out = {}
    for i, (argument, kind) in enumerate(DRAWS[name].items()):
        key = tf.random.experimental.stateless_fold_in(seed, i)
        if kind == "permutation":
            out[argument] = tf.random.experimental.stateless_shuffle(tf.range(shape[-1]), key)
        elif kind == "noise":
            out[argument] = tf.random.stateless_normal([shape[0], math.floor(AUTHORS_FRACTION * s * shape[-1])], key)
        else:
            out[argument] = tf.random.stateless_uniform([], key)
    return out


def _seeded(name: str):
    def op(x, seed, magnitude, sampling_rate):
        return AUTHORS[name](x, magnitude, **draw(name, seed, x.shape, magnitude))
    op.__name__ = name
    return op


# ---- variant "stmem_jax": ops of (x, seed, magnitude, sampling_rate) ----

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


def ours_shift(x, seed, magnitude, sampling_rate):
    """Zero-padded shift in time: ``y[:, t] = x[:, t - s]``, zero where ``t - s`` is outside."""
    samples = x.shape[-1]
    limit = tf.round(MAX_SHIFT * magnitude * samples)
    s = tf.cast(tf.floor(_uniform(seed, 0) * (2 * limit + 1)) - limit, tf.int32)
    t = tf.range(samples)
    return tf.where((t - s >= 0) & (t - s < samples), tf.roll(x, s, axis=-1), 0.0)


def ours_cutout(x, seed, magnitude, sampling_rate):
    """Zeroes one random time span in all leads."""
    return tf.where(_span_mask(seed, x.shape[-1], MAX_CUT * magnitude * x.shape[-1]), 0.0, x)


def ours_drop(x, seed, magnitude, sampling_rate):
    """Zeroes whole leads, each with probability 0.5 m; the lead with the largest draw is kept."""
    u = _uniform(seed, 0, shape=[x.shape[0]])
    dropped = (u < 0.5 * magnitude) & (u < tf.reduce_max(u))
    return tf.where(dropped[:, None], 0.0, x)


def ours_flip(x, seed, magnitude, sampling_rate):
    """Negates the signal."""
    return -x


def ours_erase(x, seed, magnitude, sampling_rate):
    """Zeroes one random time span in a random subset of leads (each with probability 0.5)."""
    leads = _uniform(seed, 2, shape=[x.shape[0]]) < 0.5
    span = _span_mask(seed, x.shape[-1], MAX_CUT * magnitude * x.shape[-1])
    return tf.where(leads[:, None] & span[None, :], 0.0, x)


def ours_sine(x, seed, magnitude, sampling_rate):
    """Adds one sinusoid of random amplitude, frequency and phase to all leads."""
    return x + _sinusoid(seed, x.shape[-1], magnitude, sampling_rate)


def ours_partial_sine(x, seed, magnitude, sampling_rate):
    """Adds one random sinusoid to all leads over a random time span only."""
    span = _span_mask(seed, x.shape[-1], MAX_PARTIAL * magnitude * x.shape[-1])
    return x + tf.where(span, _sinusoid(seed, x.shape[-1], magnitude, sampling_rate), 0.0)


def ours_partial_white_noise(x, seed, magnitude, sampling_rate):
    """Adds Gaussian noise (independent per lead and sample) over a random time span."""
    leads, samples = x.shape
    start, length = _span(seed, samples, MAX_PARTIAL * magnitude * samples)
    sigma = _uniform(seed, 3) * MAX_AMPLITUDE * magnitude
    noise = tf.random.stateless_normal([leads, length], tf.random.experimental.stateless_fold_in(seed, 4))
    return x + tf.pad(sigma * noise, [[0, 0], [start, samples - start - length]])


OURS = (ours_shift, ours_cutout, ours_drop, ours_flip, ours_erase, ours_sine, ours_partial_sine,
        ours_partial_white_noise)
OPS = {"authors": {name: _seeded(name) for name in OP_NAMES},
       "stmem_jax": {op.__name__.removeprefix("ours_"): op for op in OURS}}  # variant -> name -> op(x, seed, m, fs)


def _check(variant: str, ops, num_ops: int, level: int) -> tuple[str, ...]:
    """The op names to draw from; ValueError on a bad argument."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown RandAugment variant {variant!r}: choose from {', '.join(VARIANTS)}")
    names = OP_NAMES if ops is None else tuple(ops.split(",") if isinstance(ops, str) else ops)
    unknown = [name for name in names if name not in OP_NAMES]
    if unknown:
        raise ValueError(f"unknown RandAugment op(s) {', '.join(map(repr, unknown))}: choose from "
                         f"{', '.join(OP_NAMES)}")
    if len(set(names)) != len(names):
        raise ValueError(f"RandAugment ops named twice: {', '.join(names)}")
    if not 0 <= level <= 10:
        raise ValueError(f"augment level must be in 0..10, got {level}")
    if num_ops < 0 or (num_ops and not names):
        raise ValueError(f"RandAugment needs num_ops >= 0 and ops to draw from, got {num_ops} op(s) from {names}")
    if variant == "authors" and num_ops > len(names):
        raise ValueError(f"variant 'authors' draws {num_ops} distinct ops but only {len(names)} are given: "
                         f"{', '.join(names)}")
    return names


def choose_ops(seed, count: int, *, num_ops: int = 2, prob: float = 0.5, variant: str = "authors"
               ) -> tuple[tf.Tensor, tf.Tensor]:
    """Which of ``count`` ops :func:`rand_augment` applies, in order: (indices (num_ops,) int32,
    applied (num_ops,) bool). ``authors``: distinct indices, a uniformly drawn ordered selection;
    ``stmem_jax``: each uniform, with replacement. Each is applied with probability ``prob``."""
    op_seeds = [tf.random.experimental.stateless_fold_in(seed, i) for i in range(num_ops)]
    if variant == "authors":
        chosen = tf.argsort(_uniform(seed, CHOICE, shape=[count]))[:num_ops]
    else:
        chosen = tf.stack([tf.random.stateless_uniform([], s, 0, count, dtype=tf.int32) for s in op_seeds]
                          ) if num_ops else tf.zeros([0], tf.int32)
    applied = tf.stack([_uniform(s, 100) < prob for s in op_seeds]) if num_ops else tf.zeros([0], tf.bool)
    return tf.cast(chosen, tf.int32), applied


def rand_augment(x: tf.Tensor, seed: tf.Tensor, *, level: int = 10, num_ops: int = 2, prob: float = 0.5,
                 ops: Sequence[str] | None = None, variant: str = "authors", sampling_rate: int = 250) -> tf.Tensor:
    """Applies to ``x`` (leads, samples) the ops :func:`choose_ops` draws from ``ops`` (names of
    :data:`OP_NAMES`; None: all eight) at level ``level`` (0..10), in the order drawn; ``variant``
    one of :data:`VARIANTS`. ``seed``: an int shape-[2] tensor."""
    names = _check(variant, ops, num_ops, level)
    chosen, applied = choose_ops(seed, len(names), num_ops=num_ops, prob=prob, variant=variant)
    table = OPS[variant]
    for i in range(num_ops):
        op_seed = tf.random.experimental.stateless_fold_in(seed, i)
        branches = [lambda op=table[name]: op(x, op_seed, level / 10, sampling_rate) for name in names]
        x = tf.switch_case(tf.where(applied[i], chosen[i], len(names)), branches + [lambda: x])  # the last: no op
    return x
