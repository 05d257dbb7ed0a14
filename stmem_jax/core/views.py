"""The inputs a pre-training method can ask the pipeline for (``Method.inputs``; the pipeline,
``stmem_jax.data.pipeline``, makes them) and the shape of each in a batch."""

from __future__ import annotations

import ml_collections

VIEWS = ("series", "view1", "view2", "segment1", "segment2", "patient")


def batch_shape(view: str, batch: int, channels: int, data: ml_collections.ConfigDict) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) of ``view`` in a training batch of ``batch`` examples of ``channels`` leads,
    with a config's ``data`` section (``crop_samples``, ``segment_samples``)."""
    if view not in VIEWS:
        raise ValueError(f"unknown input view {view!r}: choose from {', '.join(VIEWS)}")
    if view == "patient":
        return (batch,), "int32"
    length = data.segment_samples if view.startswith("segment") else data.crop_samples
    return (batch, channels, length), "float32"
