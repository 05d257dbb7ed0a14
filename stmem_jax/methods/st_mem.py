"""ST-MEM (Na et al., ICLR 2024): the pre-training model (encoder with SEP and lead embeddings,
lead-wise shared decoder), the classification encoder used for fine-tuning and linear probing,
their public PyTorch layout, and the method.

``lead_indicators`` chooses which lead indicators the encoder has: ``both`` (ST-MEM), ``lead``
(lead embeddings only), ``sep`` (SEP tokens only) or ``none`` (the paper's "w/o lead
indicators"); masking, decoder, loss and recipe are the same for all four.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stmem_jax import models, torch_layout as tl
from stmem_jax.core.leads import lead_indices
from stmem_jax.layers import ENCODER_LN_EPS, PatchEmbedding, ViTSettings, dense, layer_norm
from stmem_jax.methods.base import register
from stmem_jax.methods.mae import MAESettings, MaskedAutoencoder
from stmem_jax.ops import (denormalize_patches, masked_mean, num_kept, patch_errors, patchify, random_masking,
                           sincos_table, unshuffle)

Leads = str | Sequence[str | int] | None
LEAD_INDICATORS = ("both", "lead", "sep", "none")


class STMEMSettings(ViTSettings):
    """Fields of every ST-MEM model: the lead-embedding rule and the lead indicators."""

    first_k_leads: bool = False  # the public code's rule: a k-lead input uses lead embeddings 0..k-1
    lead_indicators: str = "both"  # both | lead (embeddings only) | sep (SEP tokens only) | none

    @property
    def seps(self) -> int:
        """SEP tokens per lead: 2 (one before and one after its patches) or 0."""
        if self.lead_indicators not in LEAD_INDICATORS:
            raise ValueError(f"lead_indicators must be one of {LEAD_INDICATORS}, got {self.lead_indicators!r}")
        return 2 if self.lead_indicators in ("both", "sep") else 0

    def resolve_leads(self, series: jax.Array, leads: Leads) -> tuple[int, ...]:
        self.check_series(series)
        return lead_indices(leads, series.shape[1], num_leads=self.num_leads, first_k=self.first_k_leads)

    def torch_name(self) -> str:
        return "st_mem"

    def torch_entries(self, prefix: str, pretraining: bool) -> list[tl.Entry]:
        """The encoder's tensors in the public layout (the default lead indicators only)."""
        if self.lead_indicators != "both":
            raise ValueError(f"the public ST-MEM layout has SEP and lead embeddings; this model has "
                             f"lead_indicators={self.lead_indicators!r}: no public file can hold it")
        pos = tl.Entry(f"{prefix}pos_embedding", ("pos_embedding",), "fixed", ones=1) if pretraining \
            else tl.Entry("pos_embedding", ("encoder", "pos_embedding"), ones=1)
        return [*tl.patch_embedding(prefix), pos, tl.Entry(f"{prefix}sep_embedding", ("encoder", "sep_embedding")),
                *(tl.Entry(f"{prefix}lead_embeddings.{c}", ("encoder", "lead_embeddings"), "row", c)
                  for c in range(self.num_leads)),
                *tl.encoder_blocks(prefix, self)]

    TORCH_MARKER = "sep_embedding"
    TORCH_LABEL = "ST-MEM"
    TORCH_KINDS = ("st_mem",)

    @classmethod
    def from_torch(cls, state_dict: dict[str, np.ndarray], prefix: str, kind: str | None, fields: dict[str, Any],
                   config: dict[str, Any], pretraining: bool) -> nn.Module:
        """The model whose public file ``state_dict`` is; ``fields``: the sizes read from its blocks."""
        patch = fields.pop("token_features")
        rows = tl.require(state_dict, f"{prefix}pos_embedding").shape[-2]
        leads = {k.rsplit(".", 1)[1] for k in state_dict if k.startswith(f"{prefix}lead_embeddings.")}
        fields |= dict(seq_len=(rows - 2) * patch, patch_size=patch, num_leads=len(leads))
        return models.create_model("st_mem" if pretraining else "st_mem_classifier", **fields)


class STMEMEncoder(STMEMSettings):
    """Shared patch embedding, positional table, SEP and lead embeddings, blocks and final norm.

    With ``trainable_embeddings`` (the classification encoder) the positional table is a parameter
    and the SEP, lead and positional embeddings are drawn from N(0, 1); otherwise (pre-training)
    the table is the fixed sine-cosine one and SEP and lead embeddings are drawn from N(0, 0.02).
    """

    trainable_embeddings: bool = False

    def setup(self):
        init = nn.initializers.normal(1.0 if self.trainable_embeddings else 0.02)
        self.patch_embed = PatchEmbedding(self.width, self.dtype)
        if self.seps:
            self.sep_embedding = self.param("sep_embedding", init, (self.width,))
        if self.lead_indicators in ("both", "lead"):
            self.lead_embeddings = self.param("lead_embeddings", init, (self.num_leads, self.width))
        if self.trainable_embeddings:
            self.pos_embedding = self.param("pos_embedding", init, (self.num_patches + 2, self.width))
        self.blocks = self.transformer()
        self.norm = layer_norm(ENCODER_LN_EPS, self.dtype, "norm")

    def positions(self) -> jax.Array:
        if self.trainable_embeddings:
            return self.pos_embedding.astype(self.dtype)
        return jnp.asarray(sincos_table(self.num_patches, self.width), self.dtype)

    def embed(self, series: jax.Array) -> jax.Array:
        """(B, C, T) -> patch tokens with their positional rows added, (B, C, N, W)."""
        tokens = self.patch_embed(patchify(series.astype(self.dtype), self.patch_size))
        return tokens + self.positions()[1:-1]

    def add_sep_and_leads(self, tokens: jax.Array, indices: tuple[int, ...]) -> jax.Array:
        """(B, C, n, W) -> [SEP, tokens, SEP] per lead plus its lead embedding, lead-major
        (B, C*(n+2), W); without SEP tokens (B, C*n, W), without lead embeddings none added."""
        batch, channels, _, width = tokens.shape
        x = tokens
        if self.seps:
            pos = self.positions()
            sep = self.sep_embedding.astype(self.dtype)
            first = jnp.broadcast_to(sep + pos[0], (batch, channels, 1, width))
            last = jnp.broadcast_to(sep + pos[-1], (batch, channels, 1, width))
            x = jnp.concatenate([first, tokens, last], axis=2)
        if self.lead_indicators in ("both", "lead"):
            x = x + self.lead_embeddings.astype(self.dtype)[jnp.asarray(indices)][None, :, None, :]
        return x.reshape(batch, -1, width)


class STMEM(STMEMSettings, MAESettings):
    """ST-MEM pre-training model.

    ``apply(variables, series, noise=noise, leads=...)`` (or ``rngs={'masking': key}``) returns
    ``{'loss': (), 'pred': (B, C, N, P), 'mask': (B, C, N), 'errors': (B, C, N)}``.
    """

    def setup(self):
        self.encoder = STMEMEncoder(**self.settings(), first_k_leads=self.first_k_leads,
                                    lead_indicators=self.lead_indicators)
        self.setup_decoder(self.patch_size)

    def noise_shape(self, series_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the masking ``noise`` for a series batch: one value per example, lead and patch."""
        return (*series_shape[:2], self.num_patches)

    def fixed_tables(self) -> dict[str, jax.Array]:
        """The fixed (not trained) sine-cosine tables of the encoder and the decoder."""
        return {"pos_embedding": jnp.asarray(sincos_table(self.num_patches, self.width)),
                "decoder_pos_embedding": jnp.asarray(sincos_table(self.num_patches, self.decoder_width))}

    def encode(self, series: jax.Array, noise: jax.Array | None = None, leads: Leads = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Embeds, masks every lead independently, encodes: (latent (B, C*(n+s), W), mask, ids_restore)."""
        indices = self.encoder.resolve_leads(series, leads)
        tokens = self.encoder.embed(series)
        key = self.make_rng("masking") if noise is None else None
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, key=key, noise=noise)
        x = self.encoder.add_sep_and_leads(kept, indices)
        x = self.encoder.norm(self.encoder.blocks(x))
        return x, mask, ids_restore

    def decode(self, latent: jax.Array, ids_restore: jax.Array) -> jax.Array:
        """Lead-wise decoding: each lead's N (+ SEP) tokens pass the shared blocks on their own -> (B, C, N, P)."""
        batch, channels, num_patches = ids_restore.shape
        s = self.seps // 2
        x = self.decoder_embed(latent).reshape(batch, channels, -1, self.decoder_width)
        pos = self.fixed_tables()["decoder_pos_embedding"].astype(self.dtype)
        tokens = unshuffle(x[:, :, s:x.shape[2] - s], self.mask_token, ids_restore) + pos[1:-1]
        if s:
            tokens = jnp.concatenate([x[:, :, :1] + pos[0], tokens, x[:, :, -1:] + pos[-1]], axis=2)
        x = self.decoder(tokens.reshape(batch * channels, num_patches + 2 * s, self.decoder_width))
        x = self.decoder_head(self.decoder_norm(x))
        return x.reshape(batch, channels, num_patches + 2 * s, self.patch_size)[:, :, s:s + num_patches]

    def __call__(self, series: jax.Array, *, noise: jax.Array | None = None, leads: Leads = None
                 ) -> dict[str, jax.Array]:
        latent, mask, ids_restore = self.encode(series, noise, leads)
        pred = self.decode(latent, ids_restore)
        errors = patch_errors(pred, patchify(series, self.patch_size), self.norm_pix_loss)
        return {"loss": masked_mean(errors, mask), "pred": pred, "mask": mask, "errors": errors}

    def reconstruction(self, series: jax.Array, out: dict[str, jax.Array], leads: tuple[int, ...]):
        """(input (B, C, T), prediction (B, C, N, P) on the input's scale, mask (B, C, N), lead indices)."""
        pred = out["pred"].astype(jnp.float32)
        if self.norm_pix_loss:
            pred = denormalize_patches(pred, patchify(series, self.patch_size))
        return series, pred, out["mask"], leads

    def encoder_tokens(self, channels: int) -> int:
        return channels * (num_kept(self.num_patches, self.mask_ratio) + self.seps)

    def activation(self, channels: int) -> int:
        """Elements of one block's output, the encoder's and the decoder's, for one example."""
        decoder_tokens = channels * (self.num_patches + self.seps)
        return self.encoder_tokens(channels) * self.width + decoder_tokens * self.decoder_width

    def forward_flops(self, channels: int) -> float:
        n, kept = self.num_patches, self.encoder_tokens(channels)
        embed = 2 * channels * n * self.patch_size * self.width
        decoder = 2 * kept * self.width * self.decoder_width + self.decoder_flops(n + self.seps, channels) + \
            2 * channels * (n + self.seps) * self.decoder_width * self.patch_size
        return float(embed + self.encoder_flops(self.encoder_tokens(channels)) + decoder)

    def torch_layout(self, encoder_only: bool = False) -> list[tl.Entry]:
        if encoder_only:
            return self.torch_entries("", pretraining=True)
        return [*self.torch_entries("encoder.", pretraining=True), *tl.decoder(self)]


class STMEMClassifier(STMEMSettings):
    """Classification encoder: all patches, SEP and lead embeddings, dropout, blocks, mean over
    leads and patches (SEP excluded), LayerNorm after pooling, then a Dense head.

    ``apply(variables, series, leads=..., train=False)`` returns logits (B, classes), or the pooled
    features (B, W) when ``num_classes`` is 0. Dropout and drop-path need ``rngs={'dropout': key}``
    with ``train=True``.
    """

    num_classes: int = 0

    def setup(self):
        self.encoder = STMEMEncoder(**self.settings(), first_k_leads=self.first_k_leads,
                                    lead_indicators=self.lead_indicators, trainable_embeddings=True)
        self.embed_dropout = nn.Dropout(self.dropout)
        if self.num_classes:
            self.head = dense(self.num_classes, self.dtype, "head")

    def features(self, series: jax.Array, leads: Leads = None, train: bool = False) -> jax.Array:
        """Pooled, normalised encoder features (B, W)."""
        indices = self.encoder.resolve_leads(series, leads)
        x = self.encoder.add_sep_and_leads(self.encoder.embed(series), indices)
        x = self.encoder.blocks(self.embed_dropout(x, deterministic=not train), deterministic=not train)
        s = self.seps // 2
        x = x.reshape(series.shape[0], len(indices), self.num_patches + 2 * s, self.width)[:, :, s:s + self.num_patches]
        return self.encoder.norm(x.mean(axis=(1, 2)))

    def __call__(self, series: jax.Array, *, leads: Leads = None, train: bool = False) -> jax.Array:
        x = self.features(series, leads, train)
        return self.head(x) if self.num_classes else x

    def encoder_tokens(self, channels: int) -> int:
        return channels * (self.num_patches + self.seps)

    def activation(self, channels: int) -> int:
        return self.encoder_tokens(channels) * self.width

    def forward_flops(self, channels: int) -> float:
        return float(2 * channels * self.num_patches * self.patch_size * self.width + 2 * self.width * self.num_classes
                     + self.encoder_flops(self.encoder_tokens(channels)))

    def torch_layout(self, encoder_only: bool = False) -> list[tl.Entry]:
        head = [*tl.linear("head", ("head",))] if self.num_classes and not encoder_only else []
        return [*self.torch_entries("", pretraining=False), *head]


models.register_model("st_mem", STMEM)
models.register_model("st_mem_classifier", STMEMClassifier)


class StMem(MaskedAutoencoder):
    """Masks 75% of the patches of every lead independently and reconstructs them lead by lead."""

    name = "st_mem"
    label = "ST-MEM"
    paper = "Na et al., ICLR 2024 (arXiv 2402.09450)"
    classifier = "st_mem_classifier"

    def config(self):
        fields = super().config()
        fields.lead_indicators = "both"  # both | lead | sep | none ("w/o lead indicators")
        return fields

    def check(self, config):
        value = config.model.lead_indicators
        return [] if value in LEAD_INDICATORS else \
            [f"model.lead_indicators={value!r} is not one of {', '.join(LEAD_INDICATORS)}"]


register(StMem())

