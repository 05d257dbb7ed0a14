"""Model presets, construction by name, the model description stored with checkpoints, and what
each model family supports (the trainers ask here instead of probing attributes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stmem_jax.baselines import BaselineClassifier, BaselineMAE
from stmem_jax.st_mem import STMEM, STMEMClassifier

# Encoder width / depth / heads / MLP and decoder width / depth / heads (heads are always 64 wide).
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(width=128, depth=4, heads=2, mlp_dim=512, decoder_width=64, decoder_depth=2, decoder_heads=1),
    "vit_small": dict(width=384, depth=12, heads=6, mlp_dim=1536, decoder_width=256, decoder_depth=4, decoder_heads=4),
    "vit_base": dict(width=768, depth=12, heads=12, mlp_dim=3072, decoder_width=256, decoder_depth=4, decoder_heads=4),
}

# Model kinds: class and fixed attributes.
KINDS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "st_mem": (STMEM, {}),
    "st_mem_classifier": (STMEMClassifier, {}),
    "mtae": (BaselineMAE, {"token_axis": "time"}),
    "mtae_classifier": (BaselineClassifier, {"token_axis": "time"}),
    "mlae": (BaselineMAE, {"token_axis": "lead"}),
    "mlae_classifier": (BaselineClassifier, {"token_axis": "lead"}),
}



@dataclasses.dataclass(frozen=True)
class Family:
    """A pre-training model and its classification encoder, and what they support."""

    pretraining: str       # kind of the pre-training model
    classifier: str        # kind of its classification encoder
    lead_subsets: bool     # lead embeddings chosen by name: any subset of leads, in any order
    lead_figure: bool      # reconstructs each lead on its own: the per-lead reconstruction figure
    label: str             # how messages name the family


FAMILIES: dict[str, Family] = {
    "st_mem": Family("st_mem", "st_mem_classifier", lead_subsets=True, lead_figure=True, label="ST-MEM"),
    # MTAE / MLAE tokens hold every lead: the model's own leads, in the standard order
    "mtae": Family("mtae", "mtae_classifier", lead_subsets=False, lead_figure=False, label="MTAE/MLAE"),
    "mlae": Family("mlae", "mlae_classifier", lead_subsets=False, lead_figure=False, label="MTAE/MLAE"),
}
PRETRAINING_KINDS = tuple(FAMILIES)


def _fields(cls: type[nn.Module]) -> set[str]:
    return set(cls.__dataclass_fields__) - {"parent", "name"}


def create_model(kind: str = "st_mem", preset: str = "tiny", **overrides: Any) -> nn.Module:
    """Builds a model by kind (see ``KINDS``) and preset (see ``PRESETS``); keyword arguments
    override any field, e.g. ``create_model('st_mem_classifier', 'vit_base', num_classes=5)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(KINDS)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    cls, fixed = KINDS[kind]
    fields = _fields(cls)
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    kwargs = {k: v for k, v in PRESETS[preset].items() if k in fields} | fixed | overrides
    return cls(**kwargs)


def model_config(model: nn.Module) -> dict[str, Any]:
    """JSON-serialisable description of a model: its kind and every field."""
    for kind, (cls, fixed) in KINDS.items():
        if type(model) is cls and all(getattr(model, k) == v for k, v in fixed.items()):
            break
    else:
        raise ValueError(f"not a model of this package: {type(model).__name__}")
    config = {name: getattr(model, name) for name in sorted(_fields(cls))}
    config["dtype"] = jnp.dtype(config["dtype"]).name
    return {"kind": kind, **config}


def family(model: nn.Module | str) -> Family:
    """The family of a model (or of a kind such as ``'mtae'`` or ``'mtae_classifier'``)."""
    kind = model if isinstance(model, str) else model_config(model)["kind"]
    name = kind.removesuffix("_classifier")
    if name not in FAMILIES:
        raise ValueError(f"unknown model kind {kind!r}; choose from {sorted(KINDS)}")
    return FAMILIES[name]


def is_pretraining(model: nn.Module) -> bool:
    return model_config(model)["kind"] in FAMILIES


def pretraining_model(kind: str, preset: str, lead_ids: Sequence[int], **overrides: Any) -> nn.Module:
    """The pre-training model of ``kind`` for inputs holding the leads ``lead_ids`` (standard indices)."""
    if not family(kind).lead_subsets:
        overrides["num_leads"] = len(lead_ids)
    return create_model(kind, preset, **overrides)


def check_leads(model: nn.Module, lead_ids: Sequence[int], setting: Any) -> None:
    """Raises ValueError when ``model`` cannot take inputs holding the leads ``lead_ids``."""
    if not family(model).lead_subsets and tuple(lead_ids) != tuple(range(model.num_leads)):
        raise ValueError(f"{family(model).label} encoders need all {model.num_leads} leads in the standard order; "
                         f"lead setting {setting!r} is not possible with them")


def model_from_config(config: dict[str, Any]) -> nn.Module:
    """Inverse of :func:`model_config`."""
    config = dict(config)
    kind = config.pop("kind")
    cls, _ = KINDS[kind]
    config["dtype"] = jnp.dtype(config["dtype"])
    return cls(**config)


def example_input(model: nn.Module, batch: int = 1) -> jax.Array:
    """A zero batch of the shape the model expects, (batch, num_leads, seq_len)."""
    return jnp.zeros((batch, model.num_leads, model.seq_len), jnp.float32)


def init_variables(model: nn.Module, key: jax.Array) -> dict[str, Any]:
    """Initial variables of any model of this package, from one PRNG key (initialised under jit)."""
    params_key, masking_key, dropout_key = jax.random.split(key, 3)
    rngs = {"params": params_key, "masking": masking_key, "dropout": dropout_key}
    return jax.jit(model.init)(rngs, example_input(model))


def count_parameters(model: nn.Module, variables: dict[str, Any]) -> int:
    """Parameter count as the ST-MEM paper counts it: the parameters plus the fixed
    positional tables of pre-training models."""
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))
    if isinstance(model, (STMEM, BaselineMAE)):
        tables = model.fixed_tables()
        count += sum(int(np.prod(t.shape)) for t in tables.values())
    return count


def pretrained_encoder(model: nn.Module, variables: dict[str, Any], num_classes: int = 0,
                       **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder of a pre-training model, with its pre-trained weights.

    The pre-training model's fixed positional table becomes the classifier's (trainable)
    positional parameter. With ``num_classes`` > 0 the head is freshly initialised."""
    config = model_config(model)
    kind = config.pop("kind")
    if kind not in PRETRAINING_KINDS:
        raise ValueError(f"{kind} is not a pre-training model")
    cls, _ = KINDS[FAMILIES[kind].classifier]
    fields = {k: v for k, v in config.items() if k in _fields(cls)}
    fields["dtype"] = jnp.dtype(fields["dtype"])
    classifier = cls(**(fields | {"num_classes": num_classes} | overrides))
    encoder = dict(variables["params"]["encoder"])
    encoder["pos_embedding"] = jnp.asarray(model.fixed_tables()["pos_embedding"])
    params = {"encoder": encoder}
    if num_classes:
        params["head"] = init_variables(classifier, jax.random.key(0))["params"]["head"]
    return classifier, {"params": params}


def classification_encoder(model: nn.Module, variables: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """The classification encoder (no head) of any model: a pre-training model's encoder (see
    :func:`pretrained_encoder`), or a classifier without its head."""
    if is_pretraining(model):
        return pretrained_encoder(model, variables)
    return model.clone(num_classes=0), {"params": {"encoder": variables["params"]["encoder"]}}
