"""The interface of a pre-training method and the registry of methods.

A method is one module: its flax models (registered as model kinds with
``stmem_jax.models.register_model``) and a :class:`Method` subclass registered with
:func:`register`. The generic pre-training driver (``stmem_jax.train.pretrain``), the shared
set-up (``stmem_jax.train.setup``), ``stmem-plan``, the benchmarks and the downstream commands
reach a method only through this interface; none of them knows a method by name.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from stmem_jax import models, plugins

Rows = dict[str, jax.Array]  # a (micro-)batch: arrays whose leading axis is the example


class Method(abc.ABC):
    """A pre-training method: how it builds its model, what it draws at random per step, its loss,
    its validation metric and figure, any state besides the parameters, and the encoder it exports.

    ``model``, ``params``, ``extra`` (see :meth:`init_extra`) and ``leads`` (standard indices of
    the input's leads) are passed to every function; ``rows`` holds the pipeline's inputs
    (:attr:`inputs`: ``series``, two augmented views ``view1``/``view2``, two adjacent segments
    ``segment1``/``segment2`` with ``patient``; see ``stmem_jax.data.pipeline``) and the arrays of
    :meth:`randomness`, the example as leading axis. The config's ``data`` section says how the
    pipeline makes them (``augment``, ``segment_samples``, ``sample_rate``); a method's config file
    sets what it needs there.
    """

    name: str = ""                         # config.method, and the model kind of its pre-training model
    label: str = ""                        # the method as tables name it
    paper: str = ""                        # where it comes from
    classifier: str = ""                   # model kind of the classification encoder its encoder loads into
    inputs: tuple[str, ...] = ("series",)  # the pipeline views its step takes (``core.views.VIEWS``)
    splittable: bool = True                # the loss is a mean over examples: micro-batches change nothing

    def config(self) -> ml_collections.ConfigDict:
        """The method's own fields of ``config.model``, with their defaults."""
        return ml_collections.ConfigDict()

    def ranges(self) -> dict[str, tuple]:
        """The valid values of the fields of :meth:`config`, in the form of the common fields'
        (``stmem_jax.train.config.RANGES``): ``{field: (lowest, highest or None, lowest allowed[,
        highest allowed])}``. Checked with the common fields before a run builds anything."""
        return {}

    def check(self, config: ml_collections.ConfigDict) -> list[str]:
        """What makes no sense in the run's whole ``config`` for this method beyond each field's range
        (several fields together, the data's lengths), one ``field=value ...`` line each; called once
        every field is within its range, before a run builds anything."""
        return []

    def model(self, config: ml_collections.ConfigDict, lead_ids: Sequence[int]) -> nn.Module:
        """The pre-training model of ``config`` (its ``model`` and ``data`` sections) for inputs holding
        the leads ``lead_ids``: the model kind :attr:`name` at ``model.preset``, with every field of
        its class that ``config.model`` sets (sizes, the method's own fields), for ``data.crop_samples``."""
        m = config.model
        cls, _ = models.kinds()[self.name]
        fields = {k: m[k] for k in models.fields(cls) - {"seq_len", "dtype"} if m.get(k) is not None}
        return models.create_model(self.name, m.preset, seq_len=config.data.crop_samples, dtype=jnp.dtype(m.dtype),
                                   **fields)

    def init_params(self, model: nn.Module, key: jax.Array, leads: tuple[int, ...]) -> Any:
        """Initial parameters: ``model.init`` on a zero batch of one example holding ``leads``."""
        example = jnp.zeros((1, len(leads), model.seq_len), jnp.float32)
        return model.init({"params": key, "masking": key, "dropout": key}, example, leads=leads)["params"]

    def init_extra(self, model: nn.Module, params: Any) -> Any:
        """Training state besides parameters and optimizer state (e.g. a momentum encoder); None."""
        return None

    def frozen(self, model: nn.Module, params: Any) -> Any:
        """Which parameters never change (a tree of bools like ``params``: their updates are zero,
        weight decay included), or None when all train."""
        return None

    def randomness(self, model: nn.Module, rows: Rows, key: jax.Array) -> Rows:
        """Per-example random arrays for a step's whole batch, drawn once from ``key`` and split into
        micro-batches with it (so that micro-batches give one batch's result)."""
        return {}

    @abc.abstractmethod
    def loss(self, model: nn.Module, params: Any, extra: Any, rows: Rows, leads: tuple[int, ...]
             ) -> jax.Array | tuple[jax.Array, Any]:
        """The training loss of ``rows`` (a scalar), differentiated with respect to ``params``; or
        (loss, aux): arrays the step hands to :meth:`update_extra` (e.g. batch statistics)."""

    def update_extra(self, model: nn.Module, params: Any, extra: Any, progress: jax.Array, aux: Any = None) -> Any:
        """``extra`` after an optimizer step that gave ``params``; ``progress`` is step / total steps,
        ``aux`` the loss's aux (None without)."""
        return extra

    @abc.abstractmethod
    def validation(self, model: nn.Module, params: Any, extra: Any, rows: Rows, leads: tuple[int, ...]) -> jax.Array:
        """The validation metric of each example of ``rows``, (B,), lower is better; its mean over the
        validation split selects the kept best state. ``rows`` also holds ``valid`` (B,): False on
        the padding of the last batch (a contrastive loss leaves those out of its negatives)."""

    def check_batch(self, rows: Rows) -> None:
        """Raises ValueError when a training batch (``rows``: the inputs of :attr:`inputs`, global
        arrays) can teach the method nothing, e.g. a contrastive batch without a negative pair; the
        pre-training driver asks it of each run's first batch. Default: every batch can."""

    def figure(self, model: nn.Module, params: Any, rows: Rows, leads: tuple[int, ...], path: str,
               title: str) -> str | None:
        """Writes a figure of one example (``rows`` holds one) to ``path``; None when it has none."""
        return None

    @abc.abstractmethod
    def encoder(self, model: nn.Module, variables: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
        """The classification encoder (model kind :attr:`classifier`, no head) and its variables
        ``{'params': {'encoder': ...}}`` that the pre-trained ``variables`` give (``params``, and at
        the end of pre-training ``extra``, the method's state, e.g. BatchNorm statistics). New arrays
        (tables that become parameters) are NumPy arrays; the rest are the given ones."""

    def classifier_model(self, model: nn.Module) -> nn.Module:
        """A model of kind :attr:`classifier` without a head, with the fields it shares with the
        pre-training ``model`` (sizes, dtype): the architecture :meth:`encoder` exports into."""
        cls, fixed = models.kinds()[self.classifier]
        config = models.model_config(model)
        kept = {k: v for k, v in config.items() if k in models.fields(cls) and k not in fixed}
        return models.create_model(self.classifier, **kept | {"dtype": jnp.dtype(config["dtype"])}, num_classes=0)


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Adds ``method`` to the registry under ``method.name``."""
    if not method.name or not method.classifier:
        raise ValueError(f"{type(method).__name__} needs a name and a classifier kind")
    if method.name in _METHODS and type(_METHODS[method.name]) is not type(method):
        raise ValueError(f"method {method.name!r} is registered twice")
    _METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The method named ``name``: a built-in one, or a module path (``my_lab.my_method``) whose
    module registers a method under that name when imported."""
    if name not in _METHODS and "." in name:
        plugins.import_module(name, "method")
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(names())} or give the module path "
                         f"of a method of your own")
    return _METHODS[name]


def names() -> list[str]:
    """The registered methods' names, in registration order."""
    return list(_METHODS)
