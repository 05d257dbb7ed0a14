"""CMSC, contrastive multi-segment coding (CLOCS, Kiyasseh et al., ICML 2021; the 12-lead variant
of Oh et al. 2022), the ST-MEM paper's baseline (facts and choices: the project's ``baselines.md``).

The positives of a segment are the adjacent, non-overlapping segment of the same recording and
every other segment of the same patient in the batch; all other pairs are negatives, in both
directions. Embeddings (the ViT's CLS representation, ``stmem_jax.methods.contrastive``, no
projection head) are L2-normalised; the logits are their cosine similarities / ``temperature`` (0.1,
as CLOCS), B x B: each first segment against every second segment. How the positives are weighted (``model.positives``):

- ``clocs`` (default; CLOCS's public code, ``obtain_contrastive_loss``): the mean of up to four
  group means, each a mean of -log softmax terms: the diagonal by rows (each row's softmax), the
  diagonal by columns, the same-patient pairs above the diagonal by rows and those below it by
  columns. A group without entries (no two segments of one patient in the batch) is left out of
  the mean, so such a batch's loss is the mean of the two diagonal groups.
- ``fairseq`` (fairseq-signals' weighting, Oh et al. 2022): every positive pair once, its row and
  column terms averaged, then the mean over all positive pairs.

Segments: the two halves of a 2400-sample crop of the 10 s window (``data.segment_samples`` 1200,
16 patches each, at positions 1..16); no augmentation (as the original).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from stmem_jax import models
from stmem_jax.methods.base import register
from stmem_jax.methods.contrastive import ContrastiveMethod, ContrastiveViT, normalize

POSITIVES = ("clocs", "fairseq")  # model.positives: how the loss weights the positives (module docstring)


class CMSCModel(ContrastiveViT):
    """``apply(variables, segment, leads=...)``: the segment's representation, (B, W)."""

    temperature: float = 0.1
    positives: str = "clocs"

    def __post_init__(self):
        if self.positives not in POSITIVES:
            raise ValueError(f"model.positives={self.positives!r}: choose from {', '.join(POSITIVES)}")
        super().__post_init__()

    def __call__(self, series: jax.Array, *, leads: Any = None) -> jax.Array:
        return self.represent(series, leads)

    def forward_flops(self, channels: int) -> float:
        """Two segments of about half the length: one full-length view."""
        return self.view_flops()


models.register_model("cmsc", CMSCModel)


def cmsc_terms(e1: jax.Array, e2: jax.Array, patients: jax.Array, temperature: float,
               valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(row terms, column terms, positives), each (B, B): -log softmax of every pair's logit over its
    row and over its column, and which pairs are positives (the same patient), for L2-normalised
    segment embeddings ``e1`` (rows), ``e2`` (columns). Pairs with an invalid (padding) example
    are neither positives nor negatives."""
    logits = e1 @ e2.T / temperature
    positive = patients[:, None] == patients[None, :]
    if valid is not None:
        pair = valid[:, None] & valid[None, :]
        logits = jnp.where(pair, logits, -jnp.inf)
        positive = positive & pair
    return -jax.nn.log_softmax(logits, axis=1), -jax.nn.log_softmax(logits, axis=0), positive


def clocs_loss(rows: jax.Array, columns: jax.Array, positive: jax.Array) -> jax.Array:
    """CLOCS's weighting: the mean over the non-empty groups of each group's mean term (diagonal by
    rows, diagonal by columns, positives above the diagonal by rows, below it by columns)."""
    i, j = jnp.indices(positive.shape)
    groups = [(rows, i == j), (columns, i == j), (rows, i < j), (columns, i > j)]
    sums = jnp.stack([jnp.where(positive & part, terms, 0.0).sum() for terms, part in groups])
    counts = jnp.stack([(positive & part).sum() for _, part in groups])
    return (sums / jnp.maximum(counts, 1)).sum() / jnp.maximum((counts > 0).sum(), 1)


def fairseq_pair_terms(rows: jax.Array, columns: jax.Array, positive: jax.Array) -> jax.Array:
    """fairseq-signals' weighting: each positive pair's mean of its row and column terms, 0 elsewhere."""
    return jnp.where(positive, (rows + columns) / 2, 0.0)


class Cmsc(ContrastiveMethod):
    """Adjacent segments and same-patient segments as positives over the global batch."""

    name = "cmsc"
    label = "CMSC"
    paper = "Kiyasseh, Zhu and Clifton, ICML 2021 (CLOCS), as the ST-MEM paper's baseline"
    inputs = ("segment1", "segment2", "patient")

    def config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dict(
            temperature=0.1,           # similarity temperature
            positives="clocs",         # clocs: CLOCS's code (mean of 4 group means: diagonal by rows, by columns,
                                       # same patient above the diagonal by rows, below by columns); fairseq:
                                       # fairseq-signals' (mean over all positive pairs of their row and column terms)
        ))

    def ranges(self):
        return {"temperature": (0, None, False)}

    def check(self, config):
        """Besides a batch of 2: a known weighting of the positives; each segment whole patches of the
        ViT's crop (its positions)."""
        problems = super().check(config)
        if config.model.positives not in POSITIVES:
            problems.append(f"model.positives={config.model.positives!r} is not one of {', '.join(POSITIVES)}")
        segment, crop, patch = config.data.segment_samples, config.data.crop_samples, CMSCModel.patch_size
        if segment > crop or segment % patch:
            problems.append(f"data.segment_samples={segment} does not fit the crop: a segment is whole {patch}-sample "
                            f"patches, at most data.crop_samples={crop}")
        return problems

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
        terms = self._terms(model, params, rows, leads)
        if model.positives == "clocs":
            return clocs_loss(*terms)
        return fairseq_pair_terms(*terms).sum() / terms[2].sum()

    def validation(self, model, params, extra, rows, leads):
        """``clocs``: the loss of the validation batch, for each of its examples; ``fairseq``: each
        first segment's mean over its positives, against its validation batch."""
        terms = self._terms(model, params, rows, leads, rows["valid"])
        if model.positives == "clocs":
            return jnp.full(rows["valid"].shape, clocs_loss(*terms))
        return fairseq_pair_terms(*terms).sum(axis=1) / jnp.maximum(terms[2].sum(axis=1), 1)


register(Cmsc())
