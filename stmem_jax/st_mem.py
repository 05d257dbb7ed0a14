"""ST-MEM: the pre-training model (encoder with SEP and lead embeddings, lead-wise shared
decoder) and the classification encoder used for fine-tuning and linear probing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stmem_jax.layers import ENCODER_LN_EPS, PatchEmbedding, Transformer, dense, layer_norm
from stmem_jax.core.leads import lead_indices
from stmem_jax.ops import patchify, random_masking, reconstruction_loss, sincos_table, unshuffle

DECODER_NORM_EPS = 1e-6
Leads = str | Sequence[str | int] | None


class ViTSettings(nn.Module):
    """Hyper-parameters shared by every encoder of this package (no parameters of its own)."""

    seq_len: int = 2250
    patch_size: int = 75
    num_leads: int = 12
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    dtype: Any = jnp.float32
    remat: bool = False  # recompute block activations in the backward pass (jax.checkpoint)

    @property
    def num_patches(self) -> int:
        if self.seq_len % self.patch_size:
            raise ValueError(f"seq_len {self.seq_len} is not a multiple of patch_size {self.patch_size}")
        return self.seq_len // self.patch_size

    def transformer(self, name: str = "blocks") -> Transformer:
        return Transformer(self.depth, self.heads, self.mlp_dim, ENCODER_LN_EPS, self.dropout,
                           self.attn_dropout, self.drop_path, self.dtype, self.remat, name=name)

    def settings(self) -> dict[str, Any]:
        """This module's ViTSettings fields, to build a sub-module with the same ones."""
        return {name: getattr(self, name) for name in ViTSettings.__dataclass_fields__
                if name not in ("parent", "name")}

    def check_series(self, series: jax.Array, channels: int | None = None) -> None:
        if series.ndim != 3 or series.shape[-1] != self.seq_len:
            raise ValueError(f"expected series of shape (batch, leads, {self.seq_len}), got {series.shape}")
        if channels is not None and series.shape[1] != channels:
            raise ValueError(f"expected {channels} leads, got series of shape {series.shape}")


class STMEMEncoder(ViTSettings):
    """Shared patch embedding, positional table, SEP and lead embeddings, blocks and final norm.

    With ``trainable_embeddings`` (the classification encoder) the positional table is a parameter
    and the SEP, lead and positional embeddings are drawn from N(0, 1); otherwise (pre-training)
    the table is the fixed sine-cosine one and SEP and lead embeddings are drawn from N(0, 0.02).
    """

    first_k_leads: bool = False
    trainable_embeddings: bool = False

    def setup(self):
        init = nn.initializers.normal(1.0 if self.trainable_embeddings else 0.02)
        self.patch_embed = PatchEmbedding(self.width, self.dtype)
        self.sep_embedding = self.param("sep_embedding", init, (self.width,))
        self.lead_embeddings = self.param("lead_embeddings", init, (self.num_leads, self.width))
        if self.trainable_embeddings:
            self.pos_embedding = self.param("pos_embedding", init, (self.num_patches + 2, self.width))
        self.blocks = self.transformer()
        self.norm = layer_norm(ENCODER_LN_EPS, self.dtype, "norm")

    def positions(self) -> jax.Array:
        if self.trainable_embeddings:
            return self.pos_embedding.astype(self.dtype)
        return jnp.asarray(sincos_table(self.num_patches, self.width), self.dtype)

    def resolve_leads(self, series: jax.Array, leads: Leads) -> tuple[int, ...]:
        self.check_series(series)
        return lead_indices(leads, series.shape[1], num_leads=self.num_leads, first_k=self.first_k_leads)

    def embed(self, series: jax.Array) -> jax.Array:
        """(B, C, T) -> patch tokens with their positional rows added, (B, C, N, W)."""
        tokens = self.patch_embed(patchify(series.astype(self.dtype), self.patch_size))
        return tokens + self.positions()[1:-1]

    def add_sep_and_leads(self, tokens: jax.Array, indices: tuple[int, ...]) -> jax.Array:
        """(B, C, n, W) -> [SEP, tokens, SEP] per lead plus its lead embedding, lead-major (B, C*(n+2), W)."""
        batch, channels, _, width = tokens.shape
        pos = self.positions()
        sep = self.sep_embedding.astype(self.dtype)
        first = jnp.broadcast_to(sep + pos[0], (batch, channels, 1, width))
        last = jnp.broadcast_to(sep + pos[-1], (batch, channels, 1, width))
        x = jnp.concatenate([first, tokens, last], axis=2)
        x = x + self.lead_embeddings.astype(self.dtype)[jnp.asarray(indices)][None, :, None, :]
        return x.reshape(batch, -1, width)


class STMEM(ViTSettings):
    """ST-MEM pre-training model.

    ``apply(variables, series, mask_ratio=0.75, noise=noise)`` (or ``rngs={'masking': key}``)
    returns ``{'loss': (), 'pred': (B, C, N, P), 'mask': (B, C, N)}``.
    """

    first_k_leads: bool = False
    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def setup(self):
        self.encoder = STMEMEncoder(**self.settings(), first_k_leads=self.first_k_leads)
        self.decoder_embed = dense(self.decoder_width, self.dtype, "decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,))
        self.decoder = Transformer(self.decoder_depth, self.decoder_heads, 4 * self.decoder_width,
                                   ENCODER_LN_EPS, dtype=self.dtype, remat=self.remat, name="decoder")
        self.decoder_norm = layer_norm(DECODER_NORM_EPS, self.dtype, "decoder_norm")
        self.decoder_head = dense(self.patch_size, self.dtype, "decoder_head")

    def noise_shape(self, series_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the masking ``noise`` for a series batch: one value per example, lead and patch."""
        return (*series_shape[:2], self.num_patches)

    def fixed_tables(self) -> dict[str, jax.Array]:
        """The fixed (not trained) sine-cosine tables of the encoder and the decoder."""
        return {"pos_embedding": jnp.asarray(sincos_table(self.num_patches, self.width)),
                "decoder_pos_embedding": jnp.asarray(sincos_table(self.num_patches, self.decoder_width))}

    def encode(self, series: jax.Array, mask_ratio: float = 0.75, noise: jax.Array | None = None,
               leads: Leads = None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embeds, masks every lead independently, encodes: (latent (B, C*(n+2), W), mask, ids_restore)."""
        indices = self.encoder.resolve_leads(series, leads)
        tokens = self.encoder.embed(series)
        key = self.make_rng("masking") if noise is None else None
        kept, mask, ids_restore = random_masking(tokens, mask_ratio, key=key, noise=noise)
        x = self.encoder.add_sep_and_leads(kept, indices)
        x = self.encoder.norm(self.encoder.blocks(x))
        return x, mask, ids_restore

    def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """Lead-wise decoding: each lead's N + 2 tokens pass the shared blocks on their own -> (B, C, N, P)."""
        batch, channels, num_patches = ids_restore.shape
        x = self.decoder_embed(latent).reshape(batch, channels, -1, self.decoder_width)
        pos = self.fixed_tables()["decoder_pos_embedding"].astype(self.dtype)
        tokens = unshuffle(x[:, :, 1:-1], self.mask_token, ids_restore) + pos[1:-1]
        x = jnp.concatenate([x[:, :, :1] + pos[0], tokens, x[:, :, -1:] + pos[-1]], axis=2)
        x = self.decoder(x.reshape(batch * channels, num_patches + 2, self.decoder_width))
        x = self.decoder_head(self.decoder_norm(x))
        return x.reshape(batch, channels, num_patches + 2, self.patch_size)[:, :, 1:-1]

    def __call__(self, series: jax.Array, *, mask_ratio: float = 0.75, noise: jax.Array | None = None,
                 leads: Leads = None) -> dict[str, jax.Array]:
        latent, mask, ids_restore = self.encode(series, mask_ratio, noise, leads)
        pred = self.decode(latent, ids_restore)
        target = patchify(series, self.patch_size)
        loss = reconstruction_loss(pred, target, mask, norm_pix_loss=self.norm_pix_loss)
        return {"loss": loss, "pred": pred, "mask": mask}


class STMEMClassifier(ViTSettings):
    """Classification encoder: all patches, SEP and lead embeddings, dropout, blocks, mean over
    leads and patches (SEP excluded), LayerNorm after pooling, then a Dense head.

    ``apply(variables, series, leads=..., train=False)`` returns logits (B, classes), or the pooled
    features (B, W) when ``num_classes`` is 0. Dropout and drop-path need ``rngs={'dropout': key}``
    with ``train=True``.
    """

    first_k_leads: bool = False
    num_classes: int = 0

    def setup(self):
        self.encoder = STMEMEncoder(**self.settings(), first_k_leads=self.first_k_leads,
                                    trainable_embeddings=True)
        self.embed_dropout = nn.Dropout(self.dropout)
        if self.num_classes:
            self.head = dense(self.num_classes, self.dtype, "head")

    def features(self, series: jax.Array, leads: Leads = None, train: bool = False) -> jax.Array:
        """Pooled, normalised encoder features (B, W)."""
        indices = self.encoder.resolve_leads(series, leads)
        x = self.encoder.add_sep_and_leads(self.encoder.embed(series), indices)
        x = self.encoder.blocks(self.embed_dropout(x, deterministic=not train), deterministic=not train)
        x = x.reshape(series.shape[0], len(indices), self.num_patches + 2, self.width)[:, :, 1:-1]
        return self.encoder.norm(x.mean(axis=(1, 2)))

    def __call__(self, series: jax.Array, *, leads: Leads = None, train: bool = False) -> jax.Array:
        x = self.features(series, leads, train)
        return self.head(x) if self.num_classes else x
