"""Pure array functions of the masked autoencoders: patching, positional tables, random masking
(of patches and of leads), the loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def patchify(series: jax.Array, patch_size: int) -> jax.Array:
    """(B, C, T) -> (B, C, N, P): each lead cut into N = T / P patches in time order."""
    *lead_dims, length = series.shape
    if length % patch_size:
        raise ValueError(f"series length {length} is not a multiple of the patch size {patch_size}")
    return series.reshape(*lead_dims, length // patch_size, patch_size)


def unpatchify(patches: jax.Array) -> jax.Array:
    """(B, C, N, P) -> (B, C, N * P), the inverse of :func:`patchify`."""
    *lead_dims, num_patches, patch_size = patches.shape
    return patches.reshape(*lead_dims, num_patches * patch_size)


def sincos_table(num_positions: int, width: int, *, sep_rows: bool = True) -> np.ndarray:
    """Fixed 1-D sine-cosine positional table, float32.

    Row for position t: ``[sin(t * w_0..w_{W/2-1}), cos(t * w_0..w_{W/2-1})]`` with
    ``w_k = 1 / 10000 ** (k / (W / 2))``. With ``sep_rows`` the table has ``num_positions + 2``
    rows: zero rows 0 and N + 1 for the SEP tokens around positions 0..N-1 in rows 1..N.
    Without, it has ``num_positions + 1`` rows: a zero row 0 (for a CLS token) then the positions.
    """
    if width % 2:
        raise ValueError(f"sine-cosine table width must be even, got {width}")
    half = width // 2
    omega = 1.0 / 10000.0 ** (np.arange(half, dtype=np.float64) / half)
    angles = np.arange(num_positions, dtype=np.float64)[:, None] * omega[None, :]
    rows = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    zero = np.zeros((1, width))
    parts = [zero, rows, zero] if sep_rows else [zero, rows]
    return np.concatenate(parts, axis=0).astype(np.float32)


def num_kept(num_patches: int, mask_ratio: float) -> int:
    """Patches kept per lead: ``int(N * (1 - mask_ratio))``."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    return int(num_patches * (1 - mask_ratio))


def random_masking(tokens: jax.Array, mask_ratio: float, *, key: jax.Array | None = None,
                   noise: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keeps a random subset of tokens along axis -2, independently for every leading index.

    ``tokens`` is (..., N, W); ``noise`` (..., N) uniform in [0, 1) is drawn from ``key`` unless
    given. Tokens with the smallest noise are kept, in ascending-noise order.
    Returns ``(kept (..., n, W), mask (..., N), ids_restore (..., N))`` where ``mask`` is 1 for
    removed and 0 for kept tokens in original order, and ``ids_restore`` undoes the shuffle.
    """
    num_tokens = tokens.shape[-2]
    if noise is None:
        if key is None:
            raise ValueError("random_masking needs a PRNG `key` or an explicit `noise` array")
        noise = jax.random.uniform(key, tokens.shape[:-1])
    elif noise.shape != tokens.shape[:-1]:
        raise ValueError(f"noise shape {noise.shape} does not match tokens {tokens.shape[:-1]}")
    keep = num_kept(num_tokens, mask_ratio)
    ids_shuffle = jnp.argsort(noise, axis=-1)
    ids_restore = jnp.argsort(ids_shuffle, axis=-1)
    kept = jnp.take_along_axis(tokens, ids_shuffle[..., :keep, None], axis=-2)
    mask = (ids_restore >= keep).astype(tokens.dtype)
    return kept, mask, ids_restore


def unshuffle(kept: jax.Array, fill: jax.Array, ids_restore: jax.Array) -> jax.Array:
    """Inverse of :func:`random_masking`: kept tokens (..., n, D) plus ``fill`` (D,) for the
    removed ones, put back in original order -> (..., N, D)."""
    num_tokens = ids_restore.shape[-1]
    pad = jnp.broadcast_to(fill.astype(kept.dtype), (*kept.shape[:-2], num_tokens - kept.shape[-2], kept.shape[-1]))
    shuffled = jnp.concatenate([kept, pad], axis=-2)
    return jnp.take_along_axis(shuffled, ids_restore[..., None], axis=-2)


def normalize_patches(patches: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Each patch normalised over its last axis by its mean and UNBIASED variance."""
    mean = patches.mean(axis=-1, keepdims=True)
    var = patches.var(axis=-1, keepdims=True, ddof=1)
    return (patches - mean) / jnp.sqrt(var + eps)


def denormalize_patches(pred: jax.Array, target: jax.Array, eps: float = 1e-6) -> jax.Array:
    """The inverse of :func:`normalize_patches` with the target's statistics: patches predicted in
    normalised space (``norm_pix_loss``) on the target's scale."""
    mean = target.mean(axis=-1, keepdims=True)
    std = jnp.sqrt(target.var(axis=-1, keepdims=True, ddof=1) + eps)
    return pred * std + mean


def patch_errors(pred: jax.Array, target: jax.Array, norm_pix_loss: bool = True) -> jax.Array:
    """Mean squared error of each patch over its last axis, float32, against the (optionally
    normalised, :func:`normalize_patches`) target."""
    pred = pred.astype(jnp.float32)
    target = target.astype(jnp.float32)
    if norm_pix_loss:
        target = normalize_patches(target)
    return jnp.mean((pred - target) ** 2, axis=-1)


def masked_mean(values: jax.Array, mask: jax.Array, axis: int | tuple[int, ...] | None = None) -> jax.Array:
    """Mean of ``values`` where ``mask`` is 1 (over ``axis``; all by default), float32; 0 where the
    mask is empty. With a patch's squared error as value and removed patches as mask: the masked
    autoencoders' reconstruction loss."""
    mask = mask.astype(jnp.float32)
    return jnp.sum(values * mask, axis=axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1.0)


def random_lead_masking(series: jax.Array, key: jax.Array, probability: float,
                        restandardize: bool = False) -> jax.Array:
    """Random lead masking (RLM) of (B, C, T): each lead of each example zeroed with ``probability``,
    the others untouched; with ``restandardize`` the kept leads of each example are then z-scored
    together (over those leads and time, population deviation; an example with none kept stays zero)."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"lead masking probability must be in [0, 1), got {probability}")
    kept = ~jax.random.bernoulli(key, probability, series.shape[:-1])[..., None]
    out = jnp.where(kept, series, 0.0).astype(series.dtype)
    if not restandardize:
        return out
    count = jnp.maximum(kept.sum(axis=(1, 2), keepdims=True) * series.shape[-1], 1)
    mean = out.sum(axis=(1, 2), keepdims=True) / count
    std = jnp.sqrt((jnp.where(kept, out - mean, 0.0) ** 2).sum(axis=(1, 2), keepdims=True) / count)
    return jnp.where(kept & (std > 0), (out - mean) / jnp.where(std > 0, std, 1.0), 0.0).astype(series.dtype)
