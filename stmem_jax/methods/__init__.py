"""Pre-training methods as plugins (``config.method``).

Built in: ``st_mem`` (ST-MEM, with ``model.lead_indicators`` for the "w/o lead indicators"
ablation), ``mtae`` and ``mlae`` (MTAE+RLM is ``mtae`` with ``data.lead_masking``, an input
option of every method). A method of your own is one module that defines a :class:`Method` and
registers it (and its models) when imported; name it by its module path:
``--config.method=my_lab.my_method`` (its model kinds then start with that path, so that saved
models find the module again).

The interface is in ``stmem_jax.methods.base``; what masked autoencoders share in
``stmem_jax.methods.mae``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn

from stmem_jax import models
from stmem_jax.methods.base import Method, Rows, get, names, register

# the built-in methods register themselves
from stmem_jax.methods import st_mem, token_mae  # noqa: E402,F401
from stmem_jax.methods import moco_v3, cmsc  # noqa: E402,F401
from stmem_jax.methods import cpc  # noqa: E402,F401

__all__ = ["Method", "Rows", "get", "names", "register", "of", "is_pretraining", "classification_encoder"]


def of(model: nn.Module) -> Method | None:
    """The method whose pre-training model ``model`` is (its kind is the method's name); None for
    other models (classifiers). Imports nothing: a registered kind's method is registered."""
    kind = models.model_config(model)["kind"]
    return get(kind) if kind in names() else None


def is_pretraining(model: nn.Module) -> bool:
    return of(model) is not None


def classification_encoder(model: nn.Module, variables: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder (no head) of any model: a pre-training model's exported encoder
    (:meth:`Method.encoder`), or a classifier without its head."""
    method = of(model)
    if method is not None:
        return method.encoder(model, variables)
    return model.clone(num_classes=0), {"params": {"encoder": variables["params"]["encoder"]}}
