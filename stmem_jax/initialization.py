"""Initialisation schemes of a classifier trained from scratch and of a new head (``model.init_scheme``).

``xavier`` (stmem-jax's): the modules' own initialisers (Xavier-uniform kernels, zero biases, the
classification encoders' learned tables N(0, 1)). ``pytorch`` (the authors' code, whose
classification encoder has no initialisation function of its own): PyTorch's defaults, drawn by
parameter kind, whatever the model:

- a kernel (Dense, the fused qkv projection, a convolution) and the bias beside it:
  U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = the product of the kernel's shape but the last
  (``nn.Linear``'s Kaiming-uniform with a = sqrt(5), and its bias; ``nn.Conv1d`` alike);
- an LSTM cell (Flax's gate layers ``ii if ig io hi hf hg ho``): every weight U(-1/sqrt(H), 1/sqrt(H)),
  H the hidden size; each gate's one bias is the sum of two such draws, as PyTorch's ``b_ih + b_hh``;
- normalisation parameters as Flax initialises them, which are PyTorch's: scale 1, offset 0
  (``nn.LayerNorm``, ``nn.BatchNorm1d``), statistics held as parameters (``mean``, ``var``) kept;
- any other parameter (positional, SEP, lead and CLS tables): N(0, 1) (``torch.randn``, ``nn.Embedding``).
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import jax
import jax.numpy as jnp

INIT_SCHEMES = ("pytorch", "xavier")
LSTM_GATES = frozenset({"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"})
NORM_PARAMETERS = ("scale", "bias", "mean", "var")  # without a kernel beside them


def pytorch_defaults(params: dict[str, Any], key: jax.Array) -> dict[str, Any]:
    """``params`` (a Flax parameter tree) drawn anew with PyTorch's default initialisation (module
    docstring), each leaf from its own key folded from ``key`` and its path."""

    def key_of(path):
        return jax.random.fold_in(key, zlib.crc32("/".join(path).encode()) & 0x7FFFFFFF)

    def uniform(path, shape, bound, draws=1):
        return sum(jax.random.uniform(k, shape, jnp.float32, -bound, bound)
                   for k in jax.random.split(key_of(path), draws))

    def walk(tree, path, lstm_bound=None):
        if isinstance(tree, dict) and set(tree) == LSTM_GATES:
            bound = 1 / math.sqrt(tree["hi"]["kernel"].shape[0])
            return {k: walk(v, (*path, k), bound) for k, v in tree.items()}
        out = {}
        kernel = tree.get("kernel") if isinstance(tree, dict) else None
        for name, leaf in tree.items():
            at = (*path, name)
            if isinstance(leaf, dict):
                out[name] = walk(leaf, at)
            elif lstm_bound is not None:
                out[name] = uniform(at, leaf.shape, lstm_bound, draws=2 if name == "bias" else 1)
            elif kernel is not None and kernel.ndim >= 2 and name in ("kernel", "bias"):
                out[name] = uniform(at, leaf.shape, 1 / math.sqrt(math.prod(kernel.shape[:-1])))
            elif name in NORM_PARAMETERS:
                out[name] = leaf
            else:
                out[name] = jax.random.normal(key_of(at), leaf.shape, jnp.float32)
        return out

    return walk(params, ())
