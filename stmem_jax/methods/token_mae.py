"""MTAE and MLAE, the masked-autoencoder baselines of the ST-MEM paper's tables (both in the
public ST-MEM code), their classification encoder, public PyTorch layout and methods.

Both tokenise the whole ECG into one sequence with a CLS token and a single decoder: MTAE has
one token per time patch holding all leads (P samples x C leads, sample-major) and masks along
time; MLAE one token per lead holding its whole signal and masks over leads. Their tokens have a
fixed lead layout, so an input holding fewer leads enters zero-filled at the standard positions
of its leads (``leads``), in pre-training and downstream alike.
"""

from __future__ import annotations

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
from stmem_jax.ops import (denormalize_patches, masked_mean, num_kept, patch_errors, random_masking, sincos_table,
                           unshuffle)

TOKEN_AXES = ("time", "lead")
PATCH_SIZE = 75   # the paper's patch size, assumed for MTAE files without a config
MAX_LEADS = 12


class TokenSettings(ViTSettings):
    """Adds the tokenisation: ``token_axis='time'`` (MTAE) or ``'lead'`` (MLAE)."""

    token_axis: str = "time"

    @property
    def num_tokens(self) -> int:
        return self.num_patches if self.token_axis == "time" else self.num_leads

    @property
    def token_features(self) -> int:
        return self.patch_size * self.num_leads if self.token_axis == "time" else self.seq_len

    def full_leads(self, series: jax.Array, leads: Any = None) -> jax.Array:
        """(B, C, T) holding the leads ``leads`` (names or standard indices; None: the first C) ->
        (B, num_leads, T) with every other lead zero."""
        indices = lead_indices(leads, series.shape[1], num_leads=self.num_leads)
        if indices == tuple(range(self.num_leads)):
            return series
        full = jnp.zeros((series.shape[0], self.num_leads, series.shape[2]), series.dtype)
        return full.at[:, jnp.asarray(indices)].set(series)

    def tokenize(self, series: jax.Array) -> jax.Array:
        """(B, C, T) of all leads -> (B, L, F): time patches of all leads (F = P * C) or whole leads (F = T).
        Time tokens also come from a shorter series of whole patches (a segment: its first L tokens)."""
        if self.token_axis == "lead":
            self.check_series(series, self.num_leads)
            return series
        if self.token_axis != "time":
            raise ValueError(f"token_axis must be one of {TOKEN_AXES}, got {self.token_axis!r}")
        batch, channels, samples = series.shape
        if channels != self.num_leads or samples % self.patch_size or samples > self.seq_len:
            raise ValueError(f"expected series of shape (batch, {self.num_leads}, whole {self.patch_size}-sample "
                             f"patches up to {self.seq_len}), got {series.shape}")
        tokens = samples // self.patch_size
        patches = series.reshape(batch, channels, tokens, self.patch_size)
        return patches.transpose(0, 2, 3, 1).reshape(batch, tokens, self.patch_size * channels)

    def untokenize(self, tokens: jax.Array) -> jax.Array:
        """The inverse of :meth:`tokenize`, (B, L, F) -> (B, C, T)."""
        if self.token_axis == "lead":
            return tokens
        batch = tokens.shape[0]
        patches = tokens.reshape(batch, self.num_patches, self.patch_size, self.num_leads)
        return patches.transpose(0, 3, 1, 2).reshape(batch, self.num_leads, self.seq_len)

    def token_table(self, width: int) -> jax.Array:
        """Fixed sine-cosine table of L + 1 rows, row 0 (the CLS position) zero."""
        return jnp.asarray(sincos_table(self.num_tokens, width, sep_rows=False))

    def torch_name(self) -> str:
        return "mtae" if self.token_axis == "time" else "mlae"

    def torch_entries(self, prefix: str, pretraining: bool) -> list[tl.Entry]:
        pos = tl.Entry(f"{prefix}pos_embedding", ("pos_embedding",), "fixed", ones=1) if pretraining \
            else tl.Entry("pos_embedding", ("encoder", "pos_embedding"), ones=1)
        return [*tl.patch_embedding(prefix), pos, tl.Entry(f"{prefix}cls_embedding", ("encoder", "cls_token")),
                *tl.encoder_blocks(prefix, self)]

    TORCH_MARKER = "cls_embedding"
    TORCH_LABEL = "MTAE/MLAE"
    TORCH_KINDS = ("mtae", "mlae")

    @classmethod
    def from_torch(cls, state_dict: dict[str, np.ndarray], prefix: str, kind: str | None, fields: dict[str, Any],
                   config: dict[str, Any], pretraining: bool) -> nn.Module:
        """MTAE or MLAE, resolved by ``kind``, else by shapes: with F token features and L tokens, MTAE
        when F is a multiple of 75 with F / 75 <= 12 (P = 75, C = F / 75, T = L * 75), else MLAE
        (C = L, T = F). The file's ``config['model']`` (``seq_len``, ``patch_size``, ``num_leads``)
        replaces sizes guessed from the shapes (an MTAE's P = F / C when only C is given)."""
        features = fields.pop("token_features")
        tokens = tl.require(state_dict, f"{prefix}pos_embedding").shape[-2] - 1
        given = {k: int(v) for k, v in (config.get("model") or {}).items()
                 if k in ("seq_len", "patch_size", "num_leads")}
        if kind is None:
            kind = "mtae" if features % PATCH_SIZE == 0 and features // PATCH_SIZE <= MAX_LEADS else "mlae"
        if kind == "mlae":
            sizes = dict(seq_len=features, num_leads=tokens)
        else:
            patch = given.get("patch_size") or (features // given["num_leads"] if "num_leads" in given else PATCH_SIZE)
            if features % patch:
                raise ValueError(f"{prefix}to_patch_embedding.2.weight: {features} token features are not "
                                 f"{patch}-sample patches of whole leads (MTAE)")
            sizes = dict(seq_len=tokens * patch, patch_size=patch, num_leads=features // patch)
        return models.create_model(kind if pretraining else f"{kind}_classifier", **fields, **(sizes | given))


class TokenEncoder(TokenSettings):
    """Token embedding, positions, CLS token, blocks and final norm of MTAE / MLAE."""

    trainable_embeddings: bool = False
    embedding_std: float = 0.0  # of the CLS and positional embeddings; 0: 1.0 when trainable (the public
                                # classifier's), else 0.02

    def setup(self):
        init = nn.initializers.normal(self.embedding_std or (1.0 if self.trainable_embeddings else 0.02))
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
        """(B, C, T) of all leads -> tokens with positions (B, L, W) (a segment: the first L positions)."""
        tokens = self.patch_embed(self.tokenize(series).astype(self.dtype))
        return tokens + self.positions()[1:1 + tokens.shape[1]]

    def add_cls(self, tokens: jax.Array) -> jax.Array:
        cls = self.cls_token.astype(self.dtype) + self.positions()[0]
        return jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, self.width)), tokens], axis=1)


class BaselineMAE(TokenSettings, MAESettings):
    """MTAE / MLAE pre-training model; returns ``{'loss', 'pred' (B, L, F), 'mask' (B, L), 'errors' (B, L)}``."""

    def setup(self):
        self.encoder = TokenEncoder(**self.settings(), token_axis=self.token_axis)
        self.setup_decoder(self.token_features)

    def noise_shape(self, series_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the masking ``noise``: one value per example and token."""
        return (series_shape[0], self.num_tokens)

    def fixed_tables(self) -> dict[str, jax.Array]:
        return {"pos_embedding": self.token_table(self.width),
                "decoder_pos_embedding": self.token_table(self.decoder_width)}

    def __call__(self, series: jax.Array, *, noise: jax.Array | None = None, leads: Any = None
                 ) -> dict[str, jax.Array]:
        series = self.full_leads(series, leads)
        tokens = self.encoder.embed(series)
        key = self.make_rng("masking") if noise is None else None
        kept, mask, ids_restore = random_masking(tokens, self.mask_ratio, key=key, noise=noise)
        latent = self.encoder.norm(self.encoder.blocks(self.encoder.add_cls(kept)))

        x = self.decoder_embed(latent)
        pos = self.fixed_tables()["decoder_pos_embedding"].astype(self.dtype)
        body = unshuffle(x[:, 1:], self.mask_token, ids_restore) + pos[1:]
        x = jnp.concatenate([x[:, :1] + pos[0], body], axis=1)
        pred = self.decoder_head(self.decoder_norm(self.decoder(x)))[:, 1:]
        errors = patch_errors(pred, self.encoder.tokenize(series), self.norm_pix_loss)
        return {"loss": masked_mean(errors, mask), "pred": pred, "mask": mask, "errors": errors}

    def reconstruction(self, series: jax.Array, out: dict[str, jax.Array], leads: Any):
        """(input (B, C, T) with every lead, prediction (B, C, N, P) on the input's scale, mask
        (B, C, N), lead indices) for the per-lead figure."""
        series = self.full_leads(series, leads)
        pred = out["pred"].astype(jnp.float32)
        if self.norm_pix_loss:
            pred = denormalize_patches(pred, self.tokenize(series))
        batch = series.shape[0]
        patches = self.untokenize(pred).reshape(batch, self.num_leads, self.num_patches, self.patch_size)
        axis = 1 if self.token_axis == "time" else 2  # the token's mask spreads over its leads or patches
        mask = jnp.broadcast_to(jnp.expand_dims(out["mask"], axis), patches.shape[:3])
        return series, patches, mask, tuple(range(self.num_leads))

    def encoder_tokens(self, channels: int) -> int:
        return num_kept(self.num_tokens, self.mask_ratio) + 1

    def activation(self, channels: int) -> int:
        return self.encoder_tokens(channels) * self.width + (self.num_tokens + 1) * self.decoder_width

    def forward_flops(self, channels: int) -> float:
        tokens, features = self.num_tokens, self.token_features
        decoder = 2 * self.encoder_tokens(channels) * self.width * self.decoder_width + \
            self.decoder_flops(tokens + 1, 1) + 2 * (tokens + 1) * self.decoder_width * features
        return float(2 * tokens * features * self.width + self.encoder_flops(self.encoder_tokens(channels)) + decoder)

    def torch_layout(self, encoder_only: bool = False) -> list[tl.Entry]:
        if encoder_only:
            return self.torch_entries("", pretraining=True)
        return [*self.torch_entries("encoder.", pretraining=True), *tl.decoder(self)]


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
        x = self.features(self.full_leads(series, leads), train)
        return self.head(x) if self.num_classes else x

    def encoder_tokens(self, channels: int) -> int:
        return self.num_tokens + 1

    def activation(self, channels: int) -> int:
        return self.encoder_tokens(channels) * self.width

    def forward_flops(self, channels: int) -> float:
        return float(2 * self.num_tokens * self.token_features * self.width + 2 * self.width * self.num_classes
                     + self.encoder_flops(self.encoder_tokens(channels)))

    def torch_layout(self, encoder_only: bool = False) -> list[tl.Entry]:
        head = [*tl.linear("head", ("head",))] if self.num_classes and not encoder_only else []
        return [*self.torch_entries("", pretraining=False), *head]


for _axis, _name in (("time", "mtae"), ("lead", "mlae")):
    models.register_model(_name, BaselineMAE, token_axis=_axis)
    models.register_model(f"{_name}_classifier", BaselineClassifier, token_axis=_axis)


class Mtae(MaskedAutoencoder):
    """Masks 75% of the time patches (each holding every lead) and reconstructs them."""

    name = "mtae"
    label = "MTAE"
    paper = "Masked Time Autoencoder, the ST-MEM paper's baseline (Na et al., ICLR 2024)"
    classifier = "mtae_classifier"


class Mlae(MaskedAutoencoder):
    """Masks 75% of the leads (each a whole-signal token) and reconstructs them."""

    name = "mlae"
    label = "MLAE"
    paper = "Masked Lead Autoencoder, the ST-MEM paper's baseline (Na et al., ICLR 2024)"
    classifier = "mlae_classifier"


register(Mtae())
register(Mlae())
