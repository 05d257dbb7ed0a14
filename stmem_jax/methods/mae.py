"""What the masked autoencoders (ST-MEM, MTAE, MLAE) share: the decoder's settings and modules,
and the method: random masking noise per step, the masked reconstruction loss, its mean over
the validation split, the reconstruction figure and the export of the encoder."""

from __future__ import annotations


import flax.linen as nn
import jax
import ml_collections
import numpy as np
from ml_collections.config_dict import placeholder

from stmem_jax.layers import DECODER_NORM_EPS, ENCODER_LN_EPS, Transformer, ViTSettings, block_flops, dense, layer_norm
from stmem_jax.methods.base import Method, Rows
from stmem_jax.ops import masked_mean

DECODER_SIZES = ("decoder_width", "decoder_depth", "decoder_heads")


class MAESettings(ViTSettings):
    """A masked autoencoder's fields besides the encoder's: its decoder, mask ratio and loss.

    ``apply(variables, series, noise=noise, leads=...)`` (or ``rngs={'masking': key}``) returns
    ``{'loss': (), 'pred', 'mask', 'errors'}``: the prediction and the mask per token, and the
    squared error of each token's prediction (mean over its features) against its target."""

    decoder_width: int = 256
    decoder_depth: int = 4
    decoder_heads: int = 4
    mask_ratio: float = 0.75
    norm_pix_loss: bool = True  # each target token normalised by its own mean and (unbiased) variance

    def setup_decoder(self, features: int) -> None:
        """The decoder's modules (call from ``setup``); its head predicts ``features`` per token."""
        self.decoder_embed = dense(self.decoder_width, self.dtype, "decoder_embed")
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (self.decoder_width,))
        self.decoder = Transformer(self.decoder_depth, self.decoder_heads, 4 * self.decoder_width,
                                   ENCODER_LN_EPS, dtype=self.dtype, remat=self.remat, name="decoder")
        self.decoder_norm = layer_norm(DECODER_NORM_EPS, self.dtype, "decoder_norm")
        self.decoder_head = dense(features, self.dtype, "decoder_head")

    def decoder_flops(self, tokens: int, sequences: int) -> float:
        """Forward FLOPs of the decoder's blocks over ``sequences`` sequences of ``tokens`` tokens."""
        return block_flops(tokens, sequences, self.decoder_width, self.decoder_heads, 4 * self.decoder_width,
                           self.decoder_depth)


class MaskedAutoencoder(Method):
    """A masked autoencoder: the model masks its tokens with the step's noise and returns the loss."""

    def config(self) -> ml_collections.ConfigDict:
        fields = ml_collections.ConfigDict(dict(
            mask_ratio=0.75,           # share of the tokens removed
            norm_pix_loss=True,        # each target token normalised by its own mean and variance
        ))
        for field in DECODER_SIZES:
            fields[field] = placeholder(int)  # set to override the preset
        return fields

    def ranges(self) -> dict[str, tuple]:
        return {"mask_ratio": (0, 1, False, False), **{field: (1, None, True) for field in DECODER_SIZES}}

    def randomness(self, model: nn.Module, rows: Rows, key: jax.Array) -> Rows:
        return {"noise": jax.random.uniform(key, model.noise_shape(rows["series"].shape))}

    def _apply(self, model, params, rows, leads):
        return model.apply({"params": params}, rows["series"], noise=rows["noise"], leads=leads)

    def loss(self, model, params, extra, rows, leads):
        return self._apply(model, params, rows, leads)["loss"]

    def validation(self, model, params, extra, rows, leads):
        """The reconstruction loss of each example: its removed tokens' mean error."""
        out = self._apply(model, params, rows, leads)
        return masked_mean(out["errors"], out["mask"], axis=tuple(range(1, out["mask"].ndim)))

    def figure(self, model, params, rows, leads, path, title):
        """The input, its visible part and the prediction of the removed part, per shown lead."""
        from stmem_jax.plots import reconstruction_figure  # matplotlib: only when a figure is drawn

        out = self._apply(model, params, rows, leads)
        series, patches, mask, shown_leads = model.reconstruction(rows["series"], out, leads)
        return reconstruction_figure(np.asarray(series[0]), np.asarray(patches[0]), np.asarray(mask[0]), path,
                                     lead_ids=shown_leads, title=title)

    def encoder(self, model, variables):
        """The classifier kind's encoder with the pre-trained weights; the fixed positional table
        becomes its (trainable) positional parameter."""
        encoder = self.classifier_model(model)
        params = dict(variables["params"]["encoder"])
        params["pos_embedding"] = np.asarray(model.fixed_tables()["pos_embedding"])
        return encoder, {"params": {"encoder": params}}

