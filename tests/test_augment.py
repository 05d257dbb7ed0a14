import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from stmem_jax.data import augment  # noqa: E402

FS, LEADS, T = 250, 12, 2250
SEEDS = range(12)


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((LEADS, T)) + 3.0).astype(np.float32)  # never 0, so zeros are the op's


def run(name, x, seed, level=10):
    return augment.OPS[name](tf.constant(x), tf.constant([seed, 7], tf.int64), level / 10, FS).numpy()


def zero_span(mask):
    """(start, stop) of the single run of True in a 1-D mask, or None when there is none."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return None
    assert np.all(np.diff(idx) == 1), "not one contiguous span"
    return idx[0], idx[-1] + 1


def test_flip_negates(x):
    np.testing.assert_array_equal(run("flip", x, 0), -x)


def test_shift_moves_in_time_with_zero_fill(x):
    shifts = set()
    for seed in SEEDS:
        y = run("shift", x, seed)
        s = next(s for s in range(-225, 226)
                 if np.array_equal(y[:, max(s, 0):T + min(s, 0)], x[:, max(-s, 0):T - max(s, 0)]))
        assert np.all(y[:, :max(s, 0)] == 0) and np.all(y[:, T + min(s, 0):] == 0)
        shifts.add(s)
    assert len(shifts) > 1 and max(abs(s) for s in shifts) <= 0.1 * T


def test_cutout_zeroes_one_span_in_all_leads(x):
    spans = []
    for seed in SEEDS:
        y = run("cutout", x, seed)
        zero = y == 0
        assert np.all(zero == zero[:1]), "the span must be the same in every lead"
        np.testing.assert_array_equal(y[~zero], x[~zero])
        spans.append(zero_span(zero[0]))
    lengths = [b - a for a, b in filter(None, spans)]
    assert lengths and max(lengths) <= 0.2 * T


def test_erase_zeroes_one_span_in_some_leads(x):
    partial = False
    for seed in SEEDS:
        y = run("erase", x, seed)
        zero = y == 0
        np.testing.assert_array_equal(y[~zero], x[~zero])
        rows = zero.any(axis=1)
        if rows.any():
            span = zero_span(zero[rows][0])
            assert np.all(zero[rows] == zero[rows][:1]) and span[1] - span[0] <= 0.2 * T
            partial |= not rows.all()
    assert partial, "some draw must erase some leads but not all"


def test_drop_zeroes_whole_leads_and_keeps_one(x):
    dropped = 0
    for seed in SEEDS:
        y = run("drop", x, seed)
        zero_rows = np.all(y == 0, axis=1)
        np.testing.assert_array_equal(y[~zero_rows], x[~zero_rows])
        assert not zero_rows.all()
        dropped += zero_rows.sum()
    assert 0 < dropped < len(SEEDS) * LEADS
    np.testing.assert_array_equal(run("drop", x[:1], 0), x[:1])  # a single lead is never dropped


def sinusoid_fit_error(d):
    """Relative error of the recurrence d[t+1] + d[t-1] = 2 cos(w) d[t] that every sinusoid satisfies."""
    a, b = d[1:-1], d[2:] + d[:-2]
    c = (a @ b) / (a @ a)
    return np.abs(b - c * a).max() / np.abs(d).max()


def test_sine_adds_one_sinusoid_to_all_leads(x):
    for seed in SEEDS[:4]:
        d = run("sine", x, seed).astype(np.float64) - x
        np.testing.assert_allclose(d, np.broadcast_to(d[:1], d.shape), atol=1e-6)
        assert 0 < np.abs(d).max() <= 0.5 + 1e-6
        assert sinusoid_fit_error(d[0]) < 1e-3


def test_partial_sine_adds_a_sinusoid_over_one_span(x):
    for seed in SEEDS[:4]:
        d = run("partial_sine", x, seed).astype(np.float64) - x
        start, stop = zero_span(d[0] != 0)
        assert stop - start <= 0.5 * T
        np.testing.assert_allclose(d, np.broadcast_to(d[:1], d.shape), atol=1e-6)
        assert sinusoid_fit_error(d[0, start + 1:stop - 1]) < 1e-3


def test_partial_white_noise_adds_noise_over_one_span(x):
    for seed in SEEDS[:4]:
        d = run("partial_white_noise", x, seed).astype(np.float64) - x
        start, stop = zero_span(np.any(d != 0, axis=0))
        assert stop - start <= 0.5 * T
        noise = d[:, start:stop]
        assert np.all(noise != 0) and abs(noise.mean()) < 5 * noise.std() / np.sqrt(noise.size)
        assert not np.allclose(noise, noise[:1]), "noise must be independent per lead"


@pytest.mark.parametrize("name", ["shift", "cutout", "drop", "erase", "sine", "partial_sine", "partial_white_noise"])
def test_level_zero_is_identity(x, name):
    np.testing.assert_array_equal(run(name, x, 3, level=0), x)


def test_rand_augment_is_seeded_and_probability_controls_it(x):
    def ra(seed, **kw):
        return augment.rand_augment(tf.constant(x), tf.constant([seed, 1], tf.int64), **kw).numpy()

    np.testing.assert_array_equal(ra(0), ra(0))
    outputs = [ra(s) for s in SEEDS]
    assert any(not np.array_equal(o, x) for o in outputs)
    assert any(np.array_equal(o, x) for o in outputs), "p=0.5 and 2 ops: some draws apply nothing"
    assert all(np.array_equal(ra(s, prob=0.0), x) for s in SEEDS[:4])
    assert all(not np.array_equal(ra(s, prob=1.0, num_ops=3), x) for s in SEEDS[:4])
    with pytest.raises(ValueError, match="level"):
        ra(0, level=11)
