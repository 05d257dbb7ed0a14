"""CMSC, contrastive multi-segment coding (CLOCS, Kiyasseh et al., ICML 2021; the 12-lead variant
of Oh et al. 2022), the ST-MEM paper's baseline (facts and choices: the project's ``baselines.md``).

The positives of a segment are the adjacent, non-overlapping segment of the same recording and
every other segment of the same patient in the batch; all other pairs are negatives, in both
directions. Embeddings (the ViT's CLS representation, ``stmem_jax.methods.contrastive``, no
projection head) are L2-normalised and compared at temperature 0.1; the loss is the cross-entropy
of the rows (segment 1 against every segment 2) and of the columns, averaged over the positive
entries. Segments: the two halves of a 2400-sample crop of the 10 s window (``data.segment_samples``
1200, 16 patches each, at positions 1..16); no augmentation (as the original).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from stmem_jax import models
from stmem_jax.methods.base import register
from stmem_jax.methods.contrastive import ContrastiveMethod, ContrastiveViT, normalize


class CMSCModel(ContrastiveViT):
    """``apply(variables, segment, leads=...)``: the segment's representation, (B, W)."""

    temperature: float = 0.1

    def __call__(self, series: jax.Array, *, leads: Any = None) -> jax.Array:
        return self.represent(series, leads)

    def forward_flops(self, channels: int) -> float:
        """Two segments of about half the length: one full-length view."""
        return self.view_flops()


models.register_model("cmsc", CMSCModel)


def cmsc_terms(e1: jax.Array, e2: jax.Array, patients: jax.Array, temperature: float,
               valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(the loss of every pair, (B, B): the mean of its row and column cross-entropy terms; which
    pairs are positives, (B, B) bool) for L2-normalised segment embeddings ``e1``, ``e2``."""
    logits = e1 @ e2.T / temperature
    positive = patients[:, None] == patients[None, :]
    if valid is not None:
        pair = valid[:, None] & valid[None, :]
        logits = jnp.where(pair, logits, -jnp.inf)
        positive = positive & pair
    rows = jax.nn.log_softmax(logits, axis=1)
    columns = jax.nn.log_softmax(logits, axis=0)
    terms = -(jnp.where(positive, rows, 0.0) + jnp.where(positive, columns, 0.0)) / 2
    return terms, positive


class Cmsc(ContrastiveMethod):
    """Adjacent segments and same-patient segments as positives over the global batch."""

    name = "cmsc"
    label = "CMSC"
    paper = "Kiyasseh, Zhu and Clifton, ICML 2021 (CLOCS), as the ST-MEM paper's baseline"
    inputs = ("segment1", "segment2", "patient")

    def config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(
            temperature=0.1,           # similarity temperature
        ))

    def _terms(self, model, params, rows, leads, valid=None):
        def embed(x):
            return normalize(model.apply({"params": params}, x, leads=leads))

        return cmsc_terms(embed(rows["segment1"]), embed(rows["segment2"]), rows["patient"], model.temperature, valid)

    def check_batch(self, rows):
        """Refuses a batch whose examples are all of one patient: every pair is a positive, so the loss
        is a constant with no gradient (one patient in the data, or a batch of one)."""
        if not bool(jax.jit(lambda p: jnp.any(p != p[0]))(rows["patient"])):
            raise ValueError(f"every example of the first batch ({rows['patient'].shape[0]}) is of one patient: CMSC "
                             f"contrasts segments of different patients, and this batch holds no negative pair, so "
                             f"its loss teaches nothing; pre-train CMSC on data of many patients, with "
                             f"train.batch_size at least 2")

    def loss(self, model, params, extra, rows, leads):
        terms, positive = self._terms(model, params, rows, leads)
        return terms.sum() / positive.sum()

    def validation(self, model, params, extra, rows, leads):
        """Each first segment's mean over its positives, against its validation batch."""
        terms, positive = self._terms(model, params, rows, leads, rows["valid"])
        return terms.sum(axis=1) / jnp.maximum(positive.sum(axis=1), 1)


register(Cmsc())
