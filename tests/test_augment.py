"""RandAugment (``stmem_jax.data.augment``): our ops (variant ``stmem_jax``) by their properties; the
authors' ops (the default) against NumPy written from the recipe (spec recipe.md, section 2) given
their draws, and their draws from a seed; the draw of ops; op lists, bad arguments; which variant
zeroes whole leads."""

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
    """Today's op ``name`` (variant ``stmem_jax``)."""
    return augment.OPS["stmem_jax"][name](tf.constant(x), tf.constant([seed, 7], tf.int64), level / 10, FS).numpy()


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


@pytest.mark.parametrize("variant", augment.VARIANTS)
def test_rand_augment_is_seeded_and_probability_controls_it(x, variant):
    def ra(seed, **kw):
        return augment.rand_augment(tf.constant(x), tf.constant([seed, 1], tf.int64), variant=variant, **kw).numpy()

    np.testing.assert_array_equal(ra(0), ra(0))
    outputs = [ra(s) for s in SEEDS]
    assert any(not np.array_equal(o, x) for o in outputs)
    assert any(np.array_equal(o, x) for o in outputs), "p=0.5 and 2 ops: some draws apply nothing"
    assert all(np.array_equal(ra(s, prob=0.0), x) for s in SEEDS[:4])
    assert all(not np.array_equal(ra(s, prob=1.0, num_ops=3), x) for s in SEEDS[:4])
    with pytest.raises(ValueError, match="level"):
        ra(0, level=11)


# ---- the authors' variant (the default), against NumPy written from the recipe (spec recipe.md, section 2) ----

def reference_span(s, length, start):
    """(start, k): k = floor(U(0, 0.3 s) T), start = randint(0, T - k)."""
    k = int(np.floor(length * 0.3 * s * T))
    return int(np.floor(start * (T - k))), k


def reference_wave(s):
    """a sin(2 pi t / p), t = n / T, a = 0.3 s, p = 0.5 / s."""
    t = np.arange(T) / T
    return 0.3 * s * np.sin(2 * np.pi * t * s / 0.5)


def reference(name, x, s, **d):
    y = x.astype(np.float64).copy()
    if name == "shift":
        k = int(np.floor(d["length"] * 0.3 * s * T))
        y[:] = 0
        if d["direction"] < 0.5:  # d = +1: later in time
            y[:, k:] = x[:, :T - k]
        else:
            y[:, :T - k] = x[:, k:]
    elif name == "cutout":
        start, k = reference_span(s, d["length"], d["start"])
        y[:, start:start + k] = 0
    elif name == "drop":
        k = int(np.floor(d["count"] * np.floor(0.3 * s * T)))  # randint(0, floor(0.3 s T))
        y[:, np.argsort(d["order"])[:k]] = 0  # k distinct time points, drawn without replacement
    elif name == "flip":
        y = -y
    elif name == "erase":
        y[int(np.floor(d["lead"] * LEADS))] = 0
    elif name == "sine":
        y += reference_wave(s)
    elif name == "partial_sine":
        start, k = reference_span(s, d["length"], d["start"])
        y[:, start:start + k] += reference_wave(s)[:k]
    elif name == "partial_white_noise":
        start, k = reference_span(s, d["length"], d["start"])
        y[:, start:start + k] += 0.3 * s * d["noise"][:, :k]
    return y


def fixed_draws(name, case):
    rng = np.random.default_rng(case)
    values = {"direction": (0.3, 0.7)[case], "length": (0.37, 0.999)[case], "start": (0.42, 0.9999)[case],
              "count": (0.6, 0.999)[case], "lead": (0.55, 0.02)[case]}
    return {arg: rng.permutation(T) if kind == "permutation" else rng.standard_normal((LEADS, T)) if kind == "noise"
            else values[arg] for arg, kind in augment.DRAWS[name].items()}


@pytest.mark.parametrize("level", [10, 5, 0])
@pytest.mark.parametrize("name", augment.OP_NAMES)
def test_each_authors_op_is_the_recipes_op_given_its_draws(x, name, level):
    for case in (0, 1):  # two directions; the second case's spans end as late as they can
        d = fixed_draws(name, case)
        y = augment.AUTHORS[name](tf.constant(x), level / 10, **{k: tf.constant(v) for k, v in d.items()})
        np.testing.assert_allclose(y.numpy(), reference(name, x, level / 10, **d), atol=2e-6, err_msg=f"case {case}")


def test_authors_sizes_at_level_10_and_the_fixed_sine():
    y = np.ones((LEADS, T), np.float32)
    last = dict(length=np.float32(0.999), start=np.float32(0.9999))
    zero = augment.AUTHORS["cutout"](tf.constant(y), 1.0, **last).numpy() == 0
    assert zero.sum(axis=1).tolist() == [674] * LEADS  # floor(0.999 x 675)
    assert zero[:, -2].all() and not zero[:, -1].any()  # start < T - k: the span stops before the last sample
    erased = augment.AUTHORS["erase"](tf.constant(y), 1.0, lead=np.float32(0.999)).numpy()
    assert np.flatnonzero(np.all(erased == 0, axis=1)).tolist() == [LEADS - 1]
    wave = (augment.AUTHORS["sine"](tf.constant(0 * y), 1.0).numpy())
    assert np.allclose(wave, wave[:1]) and abs(wave.max() - 0.3) < 1e-3 and wave[0, 0] == 0
    spectrum = np.abs(np.fft.rfft(wave[0]))
    assert spectrum.argmax() == 2  # 2 cycles per 9 s crop: 0.22 Hz at 250 Hz
    single = np.ones((1, T), np.float32)  # any lead count: erase zeroes the only lead
    assert np.all(augment.AUTHORS["erase"](tf.constant(single), 1.0, lead=np.float32(0.5)).numpy() == 0)


def mapped(fn, n):
    """``fn(seed)`` for seeds [i, 5], i < n, through a tf.data map (graph mode, as in the pipeline)."""
    ds = tf.data.Dataset.range(n).map(lambda i: fn(tf.stack([i, tf.constant(5, tf.int64)]))).batch(256)
    return [np.concatenate(parts) for parts in zip(*(b if isinstance(b, tuple) else (b,)
                                                      for b in ds.as_numpy_iterator()))]


def test_authors_ops_draw_their_sizes_uniformly_from_a_seed():
    ramp = np.tile(np.arange(1, T + 1, dtype=np.float32), (LEADS, 1))  # a shift is read off the first sample
    n = 600

    def sizes(seed):
        op = augment.OPS["authors"]
        moved = op["shift"](tf.constant(ramp), seed, 1.0, FS)[0]
        shift = tf.where(moved[0] == 0, tf.reduce_sum(tf.cast(moved == 0, tf.int32)),
                         -tf.cast(moved[0], tf.int32) + 1)  # + k (later: k leading zeros) or - k
        dropped = tf.reduce_sum(tf.cast(op["drop"](tf.constant(ramp), seed, 1.0, FS)[0] == 0, tf.int32))
        erased = tf.argmax(tf.cast(tf.reduce_all(op["erase"](tf.constant(ramp), seed, 1.0, FS) == 0, axis=1), tf.int32))
        noise = op["partial_white_noise"](tf.constant(0 * ramp), seed, 1.0, FS)
        return shift, dropped, erased, tf.math.reduce_std(tf.boolean_mask(noise, noise != 0))

    shift, dropped, erased, noise_std = mapped(sizes, n)
    assert abs(np.mean(shift > 0) - 0.5) < 0.08 and np.abs(shift).max() < 675
    assert abs(np.abs(shift).mean() - 337) < 40 and abs(dropped.mean() - 337) < 40 and dropped.max() < 675
    assert set(erased) == set(range(LEADS))
    assert abs(np.nanmean(noise_std) - 0.3) < 0.01


def test_authors_draw_distinct_ops_uniformly_each_applied_with_probability_prob():
    n = 4000
    chosen, applied = mapped(lambda seed: augment.choose_ops(seed, 8), n)
    assert chosen.shape == (n, 2) and np.all(chosen[:, 0] != chosen[:, 1])  # never the same op twice
    pairs = np.bincount(chosen[:, 0] * 8 + chosen[:, 1], minlength=64).reshape(8, 8)
    assert np.all(pairs[~np.eye(8, dtype=bool)] > 0)  # every ordered pair
    first, any_slot = np.bincount(chosen[:, 0], minlength=8), np.bincount(chosen.ravel(), minlength=8)
    sigma = np.sqrt(n / 8 * 7 / 8)
    assert np.all(np.abs(first - n / 8) < 4 * sigma) and np.all(np.abs(any_slot - 2 * n / 8) < 6 * sigma)
    assert np.all(np.abs(applied.mean(axis=0) - 0.5) < 0.03)
    assert abs(np.mean(applied[:, 0] & applied[:, 1]) - 0.25) < 0.03  # independently
    (all_eight,) = mapped(lambda seed: augment.choose_ops(seed, 8, num_ops=8)[0], 50)
    assert all(sorted(row) == list(range(8)) for row in all_eight)
    ours, _ = mapped(lambda seed: augment.choose_ops(seed, 8, variant="stmem_jax"), 2000)
    assert np.any(ours[:, 0] == ours[:, 1])  # stmem_jax: with replacement


def test_rand_augment_applies_the_drawn_ops_in_the_drawn_order_from_the_given_list(x):
    wave = reference_wave(1.0)
    for i in range(8):
        seed = tf.constant([i, 2], tf.int64)
        y = augment.rand_augment(tf.constant(x), seed, prob=1.0, ops=["sine", "erase"]).numpy()
        (first, _), _ = augment.choose_ops(seed, 2, prob=1.0)
        zero = np.all(y == 0, axis=1)
        if first == 0:  # sine, then erase: one zero lead, the others x + wave
            assert zero.sum() == 1 and np.allclose(y[~zero], x[~zero] + wave, atol=1e-5)
        else:  # erase, then sine: the erased lead holds the wave
            lead = np.flatnonzero(np.all(np.abs(y - wave) < 1e-6, axis=1))
            assert not zero.any() and len(lead) == 1
    flipped = augment.rand_augment(tf.constant(x), tf.constant([0, 0], tf.int64), prob=1.0, num_ops=1, ops=("flip",))
    np.testing.assert_array_equal(flipped.numpy(), -x)


def test_bad_arguments_name_what_is_wrong(x):
    def ra(**kw):
        return augment.rand_augment(tf.constant(x), tf.constant([0, 0], tf.int64), **kw)

    with pytest.raises(ValueError, match="'wobble'"):
        ra(ops=("flip", "wobble"))
    with pytest.raises(ValueError, match="variant 'torch'"):
        ra(variant="torch")
    with pytest.raises(ValueError, match="3 distinct ops but only 2"):
        ra(num_ops=3, ops=("flip", "sine"))
    with pytest.raises(ValueError, match="twice"):
        ra(ops=("flip", "flip"))
    assert ra(num_ops=3, ops=("flip", "sine"), variant="stmem_jax").shape == x.shape  # with replacement: fine
    assert set(augment.OPS["authors"]) == set(augment.OPS["stmem_jax"]) == set(augment.OP_NAMES)


def test_only_erase_zeroes_a_whole_lead_under_the_authors_variant_and_ours_zeroes_leads_far_more(x):
    n = 600

    def zero_leads(variant):
        def fn(seed):
            y = augment.rand_augment(tf.constant(x), seed, variant=variant)
            return tf.reduce_sum(tf.cast(tf.reduce_all(y == 0, axis=1), tf.int32))
        return mapped(fn, n)[0]

    authors, ours = zero_leads("authors"), zero_leads("stmem_jax")
    chosen, applied = mapped(lambda seed: augment.choose_ops(seed, 8), n)
    erased = np.any((chosen == augment.OP_NAMES.index("erase")) & applied, axis=1)
    assert authors.max() == 1 and not np.any(authors[~erased])  # one lead, and only where erase ran
    assert 0.05 < authors.mean() < 0.2  # P(erase drawn and applied) = 2/8 x 0.5 (less when a sine follows)
    assert ours.mean() > 3 * authors.mean()
