"""Model presets, the registry of model kinds (the name a saved ``model.json`` gives each model
class), construction by name and the model description stored with checkpoints.

The model classes live in the method modules (``stmem_jax.methods``), which register them here
with :func:`register_model`; the registry knows no model by name. Every model class answers
``encoder_tokens(channels)``, ``activation(channels)`` and ``forward_flops(channels)`` (the
micro-batch budget and MFU ask it); pre-training models also ``fixed_tables()``; models with a
public PyTorch layout ``torch_layout(encoder_only)`` (``stmem_jax.convert``).
"""

from __future__ import annotations

import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


# Encoder width / depth / heads / MLP and decoder width / depth / heads (heads are always 64 wide).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(width=128, depth=4, heads=2, mlp_dim=512, decoder_width=64, decoder_depth=2, decoder_heads=1),
    "vit_small": dict(width=384, depth=12, heads=6, mlp_dim=1536, decoder_width=256, decoder_depth=4, decoder_heads=4),
    "vit_base": dict(width=768, depth=12, heads=12, mlp_dim=3072, decoder_width=256, decoder_depth=4, decoder_heads=4),
}

ENCODER_SIZES = ("width", "depth", "heads", "mlp_dim")  # the preset's encoder fields a config may override
# fields that count something: at least 1 wherever a model has them
COUNTS = ("seq_len", "patch_size", "num_leads", *ENCODER_SIZES, "decoder_width", "decoder_depth", "decoder_heads")
MAX_PARAMETERS = 2_000_000_000  # 8 GB of float32 parameters (ViT-B/75: 88.5 M): more is a mistake or a crafted file

# kind -> (class, fixed field values), filled by register_model
_KINDS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {}


def register_model(kind: str, cls: type[nn.Module], **fixed: Any) -> None:
    """Registers ``cls`` as model kind ``kind`` (with ``fixed`` field values, e.g. a token axis)."""
    if kind in _KINDS and _KINDS[kind] != (cls, fixed):
        raise ValueError(f"model kind {kind!r} is registered twice")
    _KINDS[kind] = (cls, fixed)


def kinds() -> dict[str, tuple[type[nn.Module], dict[str, Any]]]:
    """Every registered model kind (the built-in methods' and those of any method module imported)."""
    importlib.import_module("stmem_jax.methods")  # registers the built-in methods' models
    return dict(_KINDS)


def _kind(kind: str) -> tuple[type[nn.Module], dict[str, Any]]:
    """The registered kind ``kind``. Nothing is imported for it: a saved model's ``kind`` is data, and
    a method of one's own registers its kinds when the user imports its module (in Python, or by
    naming it: ``--config.method``, ``--config.model.kind``, ``--method``)."""
    registered = kinds()
    if kind not in registered:
        raise ValueError(f"unknown model kind {kind!r}: not one of the registered kinds "
                         f"({', '.join(sorted(registered))}); a method of your own registers its kinds when its "
                         f"module is imported (in Python, or named on the command line: --config.method, "
                         f"--config.model.kind, --method)")
    return registered[kind]


def fields(cls: type[nn.Module]) -> set[str]:
    """The dataclass fields of a model class (its constructor arguments)."""
    return set(cls.__dataclass_fields__) - {"parent", "name"}


def create_model(kind: str = "st_mem", preset: str = "tiny", **overrides: Any) -> nn.Module:
    """Builds a model by kind (see :func:`kinds`) and preset (see ``PRESETS``); keyword arguments
    override any field, e.g. ``create_model('st_mem_classifier', 'vit_base', num_classes=5)``."""
    cls, fixed = _kind(kind)
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    names = fields(cls)
    unknown = set(overrides) - names
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {k: v for k, v in PRESETS[preset].items() if k in names} | fixed | overrides
    return checked(cls(**kwargs))


def checked(model: nn.Module) -> nn.Module:
    """``model``, after checking that its sizes are whole positive numbers, its length a multiple of
    its patch and its parameters (counted without allocating them) at most ``MAX_PARAMETERS``;
    ValueError naming the field otherwise."""
    for name in (n for n in COUNTS if hasattr(model, n)):
        value = getattr(model, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(model).__name__}: {name} must be a whole number >= 1, got {value!r}")
    if model.seq_len % model.patch_size:
        raise ValueError(f"{type(model).__name__}: seq_len {model.seq_len} is not a multiple of patch_size "
                         f"{model.patch_size}")
    if model.width % 2:
        raise ValueError(f"{type(model).__name__}: width must be even (sine-cosine positions), got {model.width}")
    shapes = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    count = sum(int(np.prod(x.shape, dtype=np.float64)) for x in jax.tree.leaves(shapes))
    if count > MAX_PARAMETERS:
        raise ValueError(f"{type(model).__name__} of {count:,} parameters is larger than this package builds "
                         f"({MAX_PARAMETERS:,}): a wrong size or a crafted file")
    return model


def model_config(model: nn.Module, kind: str | None = None) -> dict[str, Any]:
    """JSON-serialisable description of a model: its kind (``kind``, else the first registered kind of
    its class and fixed fields: a method of one's own that reuses a class names its own) and every field."""
    for registered, (cls, fixed) in kinds().items():
        if type(model) is cls and all(getattr(model, k) == v for k, v in fixed.items()) and kind in (None, registered):
            kind = registered
            break
    else:
        raise ValueError(f"not a registered model{f' of kind {kind!r}' if kind else ''}: {type(model).__name__}")
    config = {name: getattr(model, name) for name in sorted(fields(cls))}
    config["dtype"] = jnp.dtype(config["dtype"]).name
    return {"kind": kind, **config}


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`model_config`; ValueError naming what is wrong in a description that is not
    one (unknown kind or fields, sizes that are not sizes, more than ``MAX_PARAMETERS``)."""
    if not isinstance(config, dict) or not isinstance(config.get("kind"), str):
        raise ValueError(f"a model description is a JSON object with a 'kind', got {str(config)[:80]!r}")
    config = dict(config)
    try:
        cls, fixed = _kind(config.pop("kind"))
    except ValueError as error:
        raise ValueError(f"field 'kind': {error}") from None
    unknown = set(config) - fields(cls)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    try:
        config["dtype"] = jnp.dtype(config.get("dtype", "float32"))
    except TypeError:
        raise ValueError(f"unknown dtype {config['dtype']!r}") from None
    return checked(cls(**(config | fixed)))


def example_input(model: nn.Module, batch: int = 1) -> jax.Array:
    """A zero batch of the shape the model expects, (batch, num_leads, seq_len)."""
    return jnp.zeros((batch, model.num_leads, model.seq_len), jnp.float32)


def init_variables(model: nn.Module, key: jax.Array) -> dict[str, Any]:
    """Initial variables of any model of this package, from one PRNG key (initialised under jit)."""
    params_key, masking_key, dropout_key = jax.random.split(key, 3)
    rngs = {"params": params_key, "masking": masking_key, "dropout": dropout_key}
    return jax.jit(model.init)(rngs, example_input(model))


def count_parameters(model: nn.Module, variables: dict[str, Any]) -> int:
    """Parameter count as the ST-MEM paper counts it: the parameters plus the model's fixed
    (not trained) tables, such as a pre-training model's positional tables."""
    tables = model.fixed_tables().values() if hasattr(model, "fixed_tables") else ()
    return sum(int(np.prod(x.shape)) for x in [*jax.tree.leaves(variables["params"]), *tables])
