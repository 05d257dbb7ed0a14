"""Baselines of the ST-MEM paper's tables: MTAE (masking along time) and MLAE (masking over leads).

Both tokenise the whole ECG into one sequence with a CLS token and a single decoder:
MTAE has one token per time patch holding all leads (P samples x C leads, sample-major),
MLAE one token per lead holding its whole signal. The supervised baseline is
:class:`stmem_jax.st_mem.STMEMClassifier` trained from scratch.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from stmem_jax.layers import ENCODER_LN_EPS, PatchEmbedding, Transformer, dense, layer_norm
from stmem_jax.core.leads import lead_indices
from stmem_jax.ops import random_masking, reconstruction_loss, sincos_table, unshuffle
from stmem_jax.st_mem import DECODER_NORM_EPS, ViTSettings

TOKEN_AXES = ("time", "lead")


class TokenSettings(ViTSettings):
    """Adds the tokenisation: ``token_axis='time'`` (MTAE) or ``'lead'`` (MLAE)."""

    token_axis: str = "time"

    @property
    def num_tokens(self) -> int:
        return self.num_patches if self.token_axis == "time" else self.num_leads

    def tokenize(self, series: jax.Array) -> jax.Array:
        """(B, C, T) -> (B, L, F): time patches of all leads (F = P * C) or whole leads (F = T)."""
        self.check_series(series, self.num_leads)
        if self.token_axis == "lead":
            return series
        if self.token_axis != "time":
            raise ValueError(f"token_axis must be one of {TOKEN_AXES}, got {self.token_axis!r}")
        batch, channels, _ = series.shape
        patches = series.reshape(batch, channels, self.num_patches, self.patch_size)
        return patches.transpose(0, 2, 3, 1).reshape(batch, self.num_patches, self.patch_size * channels)

    def check_leads(self, leads: Any) -> None:
        """MTAE and MLAE see every lead in every token (or as a token): all leads, standard order."""
        if leads is not None and lead_indices(leads, num_leads=self.num_leads) != tuple(range(self.num_leads)):
            raise ValueError(f"MTAE/MLAE need all {self.num_leads} leads in the standard order, got {leads!r}")

    def token_table(self, width: int) -> jax.Array:
        """Fixed sine-cosine table of L + 1 rows, row 0 (the CLS position) zero."""
        return jnp.asarray(sincos_table(self.num_tokens, width, sep_rows=False))


class TokenEncoder(TokenSettings):
    """Token embedding, positions, CLS token, blocks and final norm of MTAE / MLAE."""

    trainable_embeddings: bool = False

    def setup(self):
        init = nn.initializers.normal(1.0 if self.trainable_embeddings else 0.02)
        self.patch_embed = PatchEmbedding(self.width, self.dtype)
        self.cls_token = self.param("cls_token", init, (self.width,))
        if self.trainable_embeddings:
            self.pos_embedding = self.param("pos_embedding", init, (self.num_tokens + 1, self.width))
        self.blocks = self.transformer()
        self.norm = layer_norm(ENCODER_LN_EPS, self.dtype, "norm")

    def positions(self) -> jax.Array:
        table = self.pos_embedding if self.trainable_embeddings else self.token_table(self.width)
        return table.astype(self.dtype)

    def embed(self, series: jax.Array) -> jax.Array:
        """(B, C, T) -> tokens with positions (B, L, W)."""
        return self.patch_embed(self.tokenize(series).astype(self.dtype)) + self.positions()[1:]

    def add_cls(self, tokens: jax.Array) -> jax.Array:
        cls = self.cls_token.astype(self.dtype) + self.positions()[0]
        return jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)), tokens], axis=1)


class BaselineMAE(TokenSettings):
    """MTAE / MLAE pre-training model; returns ``{'loss', 'pred' (B, L, F), 'mask' (B, L)}``."""

    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def setup(self):
        self.encoder = TokenEncoder(**self.settings(), token_axis=self.token_axis)
        self.decoder_embed = dense(self.decoder_width, self.dtype, "decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,))
        self.decoder = Transformer(self.decoder_depth, self.decoder_heads, 4 * self.decoder_width,
                                   ENCODER_LN_EPS, dtype=self.dtype, remat=self.remat, name="decoder")
        self.decoder_norm = layer_norm(DECODER_NORM_EPS, self.dtype, "decoder_norm")
        features = self.patch_size * self.num_leads if self.token_axis == "time" else self.seq_len
        self.decoder_head = dense(features, self.dtype, "decoder_head")

    def noise_shape(self, series_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the masking ``noise``: one value per example and token."""
        return (series_shape[0], self.num_tokens)

    def fixed_tables(self) -> dict[str, jax.Array]:
        return {"pos_embedding": self.token_table(self.width),
                "decoder_pos_embedding": self.token_table(self.decoder_width)}

    def __call__(self, series: jax.Array, *, mask_ratio: float = 0.75, noise: jax.Array | None = None,
                 leads: Any = None) -> dict[str, jax.Array]:
        self.check_leads(leads)
        tokens = self.encoder.embed(series)
        key = self.make_rng("masking") if noise is None else None
        kept, mask, ids_restore = random_masking(tokens, mask_ratio, key=key, noise=noise)
        latent = self.encoder.norm(self.encoder.blocks(self.encoder.add_cls(kept)))

        x = self.decoder_embed(latent)
        pos = self.fixed_tables()["decoder_pos_embedding"].astype(self.dtype)
        body = unshuffle(x[:, 1:], self.mask_token, ids_restore) + pos[1:]
        x = jnp.concatenate([x[:, :1] + pos[0], body], axis=1)
        pred = self.decoder_head(self.decoder_norm(self.decoder(x)))[:, 1:]
        target = self.encoder.tokenize(series)
        loss = reconstruction_loss(pred, target, mask, norm_pix_loss=self.norm_pix_loss)
        return {"loss": loss, "pred": pred, "mask": mask}


class BaselineClassifier(TokenSettings):
    """MTAE / MLAE classification encoder: tokens, CLS, dropout, blocks, mean over the non-CLS
    tokens, LayerNorm, optional Dense head (``num_classes`` 0 returns the features)."""

    num_classes: int = 0

    def setup(self):
        self.encoder = TokenEncoder(**self.settings(), token_axis=self.token_axis, trainable_embeddings=True)
        self.embed_dropout = nn.Dropout(self.dropout)
        if self.num_classes:
            self.head = dense(self.num_classes, self.dtype, "head")

    def features(self, series: jax.Array, train: bool = False) -> jax.Array:
        x = self.embed_dropout(self.encoder.add_cls(self.encoder.embed(series)), deterministic=not train)
        x = self.encoder.blocks(x, deterministic=not train)
        return self.encoder.norm(x[:, 1:].mean(axis=1))

    def __call__(self, series: jax.Array, *, leads: Any = None, train: bool = False) -> jax.Array:
        self.check_leads(leads)
        x = self.features(series, train)
        return self.head(x) if self.num_classes else x
