import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stmem_jax.ops import (masked_mean, normalize_patches, num_kept, patch_errors, patchify, random_masking,
                           sincos_table, unpatchify, unshuffle)


def reconstruction_loss(pred, target, mask, norm_pix_loss=True):
    return masked_mean(patch_errors(pred, target, norm_pix_loss), mask)


def test_patchify_cuts_each_lead_in_time_order_and_unpatchify_inverts():
    series = jnp.arange(2 * 3 * 12, dtype=jnp.float32).reshape(2, 3, 12)
    patches = patchify(series, 4)
    assert patches.shape == (2, 3, 3, 4)
    np.testing.assert_array_equal(patches[1, 2, 1], series[1, 2, 4:8])
    np.testing.assert_array_equal(unpatchify(patches), series)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(series, 5)


def test_sincos_table_rows():
    table = sincos_table(30, 8)
    assert table.shape == (32, 8) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], 0)
    np.testing.assert_array_equal(table[31], 0)
    # row t + 1 = [sin(t w0..w3), cos(t w0..w3)], w_k = 1 / 10000 ** (k / 4)
    t = 5
    omega = np.array([1.0, 10000 ** -0.25, 10000 ** -0.5, 10000 ** -0.75])
    np.testing.assert_allclose(table[t + 1], np.concatenate([np.sin(t * omega), np.cos(t * omega)]), rtol=1e-6)
    np.testing.assert_array_equal(table[1], [0, 0, 0, 0, 1, 1, 1, 1])
    cls_table = sincos_table(30, 8, sep_rows=False)
    assert cls_table.shape == (31, 8)
    np.testing.assert_array_equal(cls_table, table[:31])


def test_num_kept_follows_int_truncation():
    assert num_kept(30, 0.75) == 7
    assert num_kept(12, 0.75) == 3
    assert num_kept(30, 0.5) == 15
    with pytest.raises(ValueError):
        num_kept(30, 1.0)


def test_masking_with_explicit_noise_matches_hand_computation():
    tokens = jnp.arange(5, dtype=jnp.float32)[None, None, :, None] * jnp.ones((1, 1, 5, 2))
    noise = jnp.array([[[0.9, 0.1, 0.5, 0.3, 0.7]]])
    kept, mask, ids_restore = random_masking(tokens, 0.6, noise=noise)  # keep int(5 * 0.4) = 2
    # ascending noise: 1 (0.1), 3 (0.3), 2 (0.5), 4 (0.7), 0 (0.9)
    np.testing.assert_array_equal(kept[0, 0, :, 0], [1, 3])
    np.testing.assert_array_equal(mask[0, 0], [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(ids_restore[0, 0], [4, 0, 2, 1, 3])


def test_masking_keeps_exact_count_per_example_and_lead_and_differs_between_leads():
    tokens = jax.random.normal(jax.random.key(0), (4, 12, 30, 8))
    kept, mask, ids_restore = random_masking(tokens, 0.75, key=jax.random.key(1))
    assert kept.shape == (4, 12, 7, 8)
    np.testing.assert_array_equal(mask.sum(-1), 23)
    # leads of one example do not share a mask, nor do examples
    assert len({tuple(np.asarray(m)) for m in mask[0]}) == 12
    assert not np.array_equal(mask[0], mask[1])
    # same key, same mask; another key, another mask
    _, again, _ = random_masking(tokens, 0.75, key=jax.random.key(1))
    _, other, _ = random_masking(tokens, 0.75, key=jax.random.key(2))
    np.testing.assert_array_equal(mask, again)
    assert not np.array_equal(mask, other)


def test_mask_and_ids_restore_agree():
    tokens = jax.random.normal(jax.random.key(0), (3, 12, 30, 4))
    kept, mask, ids_restore = random_masking(tokens, 0.75, key=jax.random.key(3))
    fill = jnp.full((4,), 1e6)
    restored = unshuffle(kept, fill, ids_restore)
    removed = np.asarray(mask, bool)
    np.testing.assert_array_equal(np.asarray(restored)[~removed], np.asarray(tokens)[~removed])
    assert np.all(np.asarray(restored)[removed] == 1e6)


def test_masking_requires_key_or_matching_noise():
    tokens = jnp.zeros((1, 2, 30, 4))
    with pytest.raises(ValueError, match="key"):
        random_masking(tokens, 0.75)
    with pytest.raises(ValueError, match="noise shape"):
        random_masking(tokens, 0.75, noise=jnp.zeros((1, 2, 29)))


def test_normalize_patches_uses_unbiased_variance():
    patch = jnp.array([1.0, 2.0, 3.0, 6.0])
    expected = (patch - 3.0) / np.sqrt(np.var(np.asarray(patch), ddof=1) + 1e-6)
    np.testing.assert_allclose(normalize_patches(patch), expected, rtol=1e-6)


def test_loss_counts_removed_patches_only_with_unbiased_target():
    rng = np.random.default_rng(0)
    target = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    pred = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    mask = (rng.random((2, 3, 5)) < 0.6).astype(np.float32)
    loss = reconstruction_loss(pred, target, mask)

    norm = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    expected = (((pred - norm) ** 2).mean(-1) * mask).sum() / mask.sum()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    biased = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, keepdims=True) + 1e-6)
    assert abs(float(loss) - (((pred - biased) ** 2).mean(-1) * mask).sum() / mask.sum()) > 1e-3

    changed = pred.copy()
    changed[mask == 0] += 100.0  # kept patches
    np.testing.assert_allclose(reconstruction_loss(changed, target, mask), loss, rtol=1e-6)
    changed = pred.copy()
    changed[mask == 1] += 1.0  # removed patches
    assert float(reconstruction_loss(changed, target, mask)) != pytest.approx(float(loss))

    raw = reconstruction_loss(pred, target, mask, norm_pix_loss=False)
    np.testing.assert_allclose(raw, (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum(), rtol=1e-5)


def test_random_lead_masking_zeroes_whole_leads_and_can_restandardise_the_kept_ones():
    from stmem_jax.ops import random_lead_masking

    series = jax.random.normal(jax.random.key(0), (64, 12, 300)) * 2.0 + 1.0
    masked = np.asarray(random_lead_masking(series, jax.random.key(1), 0.5))
    zeroed = np.all(masked == 0, axis=-1)
    kept = ~zeroed
    assert 0.4 < zeroed.mean() < 0.6  # each lead with probability 0.5
    np.testing.assert_array_equal(masked[kept], np.asarray(series)[kept])  # kept leads untouched
    again = np.asarray(random_lead_masking(series, jax.random.key(1), 0.5))
    np.testing.assert_array_equal(again, masked)  # reproducible from the key

    public = np.asarray(random_lead_masking(series, jax.random.key(1), 0.3, restandardize=True))
    for example, leads in zip(public, ~np.all(public == 0, axis=-1)):
        values = example[leads]
        np.testing.assert_allclose([values.mean(), values.std()], [0.0, 1.0], atol=1e-4)
    assert np.all(np.asarray(random_lead_masking(series[:1], jax.random.key(0), 0.999999, True)) == 0)
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        random_lead_masking(series, jax.random.key(1), 1.0)
