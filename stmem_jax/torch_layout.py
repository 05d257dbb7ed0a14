"""The vocabulary of public PyTorch checkpoint layouts: one :class:`Entry` per tensor and the
entries of the modules the public ST-MEM code builds models from. A model class with a public
layout lists its entries with these (``torch_layout``); ``stmem_jax.convert`` reads and writes
files with them. PyTorch Linear weights are (out, in); Flax kernels are (in, out)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from stmem_jax.layers import HEAD_DIM


class Entry(NamedTuple):
    """One PyTorch tensor and where it lives in the Flax variables.

    kind: ``linear`` (transposed), ``tensor`` (as is, after ``ones`` leading singleton axes of the
    PyTorch tensor), ``row`` (row ``index`` of a stacked parameter), ``fixed`` (a fixed table of
    the model, checked, not stored) or ``identity`` (a Dense layer the public model does not have,
    an identity there: ``key`` names the Linear the file would hold otherwise).
    """

    key: str
    path: tuple[str, ...]
    kind: str = "tensor"
    index: int = 0
    ones: int = 0


def linear(key: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", (*path, "kernel"), "linear")
    yield Entry(f"{key}.bias", (*path, "bias"))


def norm(key: str, path: tuple[str, ...]) -> Iterator[Entry]:
    yield Entry(f"{key}.weight", (*path, "scale"))
    yield Entry(f"{key}.bias", (*path, "bias"))


def block(key: str, path: tuple[str, ...], heads: int, width: int) -> Iterator[Entry]:
    """A pre-norm transformer block (``layers.Block``). The public attention has no output
    projection when one head is as wide as the block (``project_out = not (heads == 1 and dim_head
    == dim)``): then ours is an ``identity`` entry."""
    yield from norm(f"{key}.attn.norm", (*path, "attn_norm"))
    yield from linear(f"{key}.attn.fn.to_qkv", (*path, "attn", "qkv"))
    if heads == 1 and width == HEAD_DIM:
        yield Entry(f"{key}.attn.fn.to_out.0", (*path, "attn", "out"), "identity")
    else:
        yield from linear(f"{key}.attn.fn.to_out.0", (*path, "attn", "out"))
    yield from norm(f"{key}.ff.norm", (*path, "mlp_norm"))
    yield from linear(f"{key}.ff.fn.net.0", (*path, "mlp", "fc1"))
    yield from linear(f"{key}.ff.fn.net.3", (*path, "mlp", "fc2"))


def patch_embedding(prefix: str) -> Iterator[Entry]:
    """The encoder's ``layers.PatchEmbedding``."""
    embed = ("encoder", "patch_embed")
    yield from norm(f"{prefix}to_patch_embedding.1", (*embed, "norm_in"))
    yield from linear(f"{prefix}to_patch_embedding.2", (*embed, "proj"))
    yield from norm(f"{prefix}to_patch_embedding.3", (*embed, "norm_out"))


def encoder_blocks(prefix: str, model) -> Iterator[Entry]:
    for i in range(model.depth):
        yield from block(f"{prefix}block{i}", ("encoder", "blocks", f"block_{i}"), model.heads, model.width)
    yield from norm(f"{prefix}norm", ("encoder", "norm"))


def decoder(model) -> Iterator[Entry]:
    """A masked autoencoder's decoder (``decoder_embed``, mask token, fixed table, blocks, norm, head),
    after the shared patch embedding that the public model holds twice."""
    yield from patch_embedding("")
    yield from linear("to_decoder_embedding", ("decoder_embed",))
    yield Entry("mask_embedding", ("mask_token",), ones=2)
    yield Entry("decoder_pos_embed", ("decoder_pos_embedding",), "fixed", ones=1)
    for j in range(model.decoder_depth):
        yield from block(f"decoder_blocks.{j}", ("decoder", f"block_{j}"), model.decoder_heads, model.decoder_width)
    yield from norm("decoder_norm", ("decoder_norm",))
    yield from linear("decoder_head", ("decoder_head",))


def require(state_dict: dict[str, np.ndarray], key: str) -> np.ndarray:
    if key not in state_dict:
        raise KeyError(f"not a complete checkpoint of this model: tensor {key!r} is missing")
    return state_dict[key]
