"""What the contrastive methods (MoCo v3, CMSC) share: their ViT, its representation and export,
batch normalisation over the global batch, and the InfoNCE terms.

The ViT is MTAE's classification encoder (``mtae_classifier``, ``stmem_jax.methods.token_mae``):
one token per 75-sample time patch holding all leads, a CLS token, learned positions. The
representation is the final-LayerNorm'd CLS token; a shorter input (a segment) takes the first
positions. The exported encoder is the ``mtae_classifier`` encoder, so these methods fine-tune and
probe through MTAE's classifier. Every array here spans the whole global batch: under ``jit`` over
a mesh the means and the similarity matrices are computed across devices, so the loss on 8 devices
is the loss on 1 (the step is never split into micro-batches: ``splittable = False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stmem_jax.methods.base import Method
from stmem_jax.methods.token_mae import TokenEncoder, TokenSettings

EMBEDDING_STD = 0.02  # CLS and positional embeddings at pre-training initialisation
BN_EPS = 1e-5


class BatchNorm(nn.Module):
    """Batch normalisation with the statistics of the (global) batch, as in training; no running
    statistics (the heads that use it are dropped at export). ``affine=False``: no scale or offset."""

    affine: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(axis=0)
        var = jnp.square(x - mean).mean(axis=0)
        y = (x - mean) * jax.lax.rsqrt(var + BN_EPS)
        if self.affine:
            y = y * self.param("scale", nn.initializers.ones, (x.shape[-1],)) + \
                self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return y


class MLP(nn.Module):
    """Dense (no bias) + BN + ReLU per hidden layer, then Dense (no bias) + BN without scale/offset
    (the MoCo v3 projector and predictor)."""

    features: Sequence[int]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, size in enumerate(self.features):
            x = nn.Dense(size, use_bias=False, name=f"dense_{i}")(x)
            last = i == len(self.features) - 1
            x = BatchNorm(affine=not last, name=f"norm_{i}")(x)
            if not last:
                x = nn.relu(x)
        return x


class ContrastiveViT(TokenSettings):
    """The ViT the contrastive methods train (parameters under ``encoder``, as ``mtae_classifier``'s)."""

    def setup(self):
        self.encoder = TokenEncoder(**self.settings(), token_axis="time", trainable_embeddings=True,
                                    embedding_std=EMBEDDING_STD)

    def represent(self, series: jax.Array, leads: Any = None) -> jax.Array:
        """(B, C, T) -> (B, W): the final-LayerNorm'd CLS token (T: whole patches, up to ``seq_len``)."""
        x = self.encoder.add_cls(self.encoder.embed(self.full_leads(series, leads)))
        return self.encoder.norm(self.encoder.blocks(x))[:, 0].astype(jnp.float32)

    def encoder_tokens(self, channels: int) -> int:
        return self.num_patches + 1

    def activation(self, channels: int) -> int:
        return self.encoder_tokens(channels) * self.width

    def view_flops(self) -> float:
        """Forward FLOPs of the ViT over one full-length view."""
        return float(2 * self.num_patches * self.patch_size * self.num_leads * self.width
                     + self.encoder_flops(self.encoder_tokens(self.num_leads)))


def normalize(x: jax.Array) -> jax.Array:
    """Rows scaled to unit L2 norm."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), 1e-24))


def info_nce(q: jax.Array, k: jax.Array, temperature: float, valid: jax.Array | None = None) -> jax.Array:
    """Per-row cross-entropy of ``q k^T / temperature`` with row i's positive at column i, (B,); the
    keys of invalid rows (padding) are left out of every row's negatives."""
    logits = q @ k.T / temperature
    if valid is not None:
        logits = jnp.where(valid[None, :], logits, -jnp.inf)
    return -jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))


class ContrastiveMethod(Method):
    """A contrastive method on :class:`ContrastiveViT`: the batch is one set of negatives, its ViT
    exports into ``mtae_classifier``, and it has no figure."""

    classifier = "mtae_classifier"
    splittable = False

    def check(self, config):
        """The batch is the negatives: a batch of one example has none (its loss is 0 whatever the model)."""
        sizes = {"train.batch_size": config.train.batch_size}
        if config.eval.every_steps:
            sizes["eval.batch_size"] = config.eval.batch_size
        return [f"{field}={size} gives {self.label}'s loss no negative: it needs at least 2 examples per batch"
                for field, size in sizes.items() if size < 2]

    def init_params(self, model: nn.Module, key: jax.Array, leads: tuple[int, ...]) -> Any:
        example = jnp.zeros((2, len(leads), model.seq_len), jnp.float32)  # BN needs two examples to init
        return model.init({"params": key}, example, leads=leads)["params"]

    def encoder(self, model, variables):
        """``mtae_classifier``'s encoder with the ViT's parameters (heads and momentum copies dropped)."""
        encoder = self.classifier_model(model)
        return encoder, {"params": {"encoder": variables["params"]["encoder"]}}
