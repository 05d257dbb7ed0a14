"""AdamW with warm-up + half-cycle cosine, weight decay on every parameter (the authors' code) or on
Dense kernels only, optional clipping, layer-wise learning-rate decay and frozen parts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import optax
from flax.traverse_util import path_aware_map


def peak_learning_rate(lr: float | None, base_lr: float, global_batch: int) -> float:
    """``lr`` when set, else ``base_lr * global_batch / 256`` (the MAE scaling rule)."""
    return float(lr) if lr else base_lr * global_batch / 256


def schedule(peak: float, total_steps: int, warmup_steps: int, min_lr: float = 0.0) -> optax.Schedule:
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then half-cycle cosine to ``min_lr``."""
    warmup_steps = min(warmup_steps, max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), min_lr)


DECAY_ON = ("all", "kernels")


STATISTICS = ("mean", "var")  # frozen normalisation statistics held as parameters (CPC's exported BatchNorms)


def decay_mask(params: Any, on: str = "all") -> Any:
    """Which parameters weight decay applies to: ``all``, every parameter (the authors' AdamW over all
    parameters) but frozen statistics (``STATISTICS``: they take no gradient, and decay would shrink
    them); ``kernels``, Dense kernels only (norms, biases and embeddings get none)."""
    if on not in DECAY_ON:
        raise ValueError(f"train.weight_decay_on must be one of {DECAY_ON}, got {on!r}")
    return path_aware_map(lambda path, _: path[-1] == "kernel" or (on == "all" and path[-1] not in STATISTICS),
                          params)


def layer_depths(params: Any, depth: int) -> Any:
    """Depth of each parameter for layer-wise decay: embeddings 0, block i -> i + 1, the rest depth + 1."""
    def of(path, _):
        if "blocks" in path:
            return int(path[path.index("blocks") + 1].split("_")[1]) + 1
        return 0 if path[0] == "encoder" and path[1] != "norm" else depth + 1
    return path_aware_map(of, params)


def adamw(learning_rate: optax.Schedule, params: Any, *, b1: float = 0.9, b2: float = 0.95,
          weight_decay: float = 0.05, weight_decay_on: str = "all", clip_norm: float = 0.0,
          layer_decay: float = 1.0, depth: int = 0, frozen: Sequence[str] = ()) -> optax.GradientTransformation:
    """AdamW over ``params`` (a tree of arrays or shapes). ``layer_decay`` < 1 scales the update of
    a parameter at depth d by ``layer_decay ** (depth + 1 - d)`` (the head and final norm by 1). The
    top-level parts named in ``frozen`` (a linear probe's ``encoder``) never change: no update, no
    weight decay, no optimizer state."""
    mask = decay_mask(params, weight_decay_on)
    if frozen:
        mask = {k: False if k in frozen else v for k, v in mask.items()}
    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm > 0 else []
    parts.append(optax.adamw(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay, mask=mask))
    if layer_decay < 1.0:
        scales = jax.tree.map(lambda d: layer_decay ** (depth + 1 - d), layer_depths(params, depth))
        parts.append(optax.transforms.partition(
            {s: optax.scale(s) for s in set(jax.tree.leaves(scales))}, scales))
    tx = optax.chain(*parts)
    if not frozen:
        return tx
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                 {k: "frozen" if k in frozen else "train" for k in params})


def from_config(train: ml_collections.ConfigDict, learning_rate: optax.Schedule, params: Any, *,
                layer_decay: float = 1.0, depth: int = 0, frozen: Sequence[str] = ()) -> optax.GradientTransformation:
    """:func:`adamw` with the ``train`` config section's betas, weight decay and clipping."""
    return adamw(learning_rate, params, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                 weight_decay_on=train.weight_decay_on, clip_norm=train.clip_norm, layer_decay=layer_decay,
                 depth=depth, frozen=frozen)
