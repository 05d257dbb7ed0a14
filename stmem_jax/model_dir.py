"""A model and its variables as one directory: orbax-written variables plus ``model.json``.

The variables are the model's ``params`` and, for a pre-training model whose method keeps state
besides its parameters (CPC's BatchNorm running statistics, a momentum encoder), that state as
``extra``: what the method's exported encoder is made of (``Method.encoder``)."""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath

from stmem_jax import methods
from stmem_jax.core import fileio
from stmem_jax.models import init_variables, model_config, model_from_config

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def _path(directory: str | os.PathLike) -> epath.Path:
    return epath.Path(fileio.absolute(directory))


def save_model(directory: str | os.PathLike, model: nn.Module, variables: dict[str, Any], *,
               overwrite: bool = False, metadata: dict[str, Any] | None = None, kind: str | None = None
               ) -> epath.Path:
    """Writes ``variables`` (``params``, and a pre-training model's ``extra``) with orbax and the model
    description (``kind``: see ``models.model_config``), so :func:`load_model` (and the trainers) can
    rebuild both. Refuses to replace an existing directory unless ``overwrite``. In a multi-process
    run every process calls it with the same (global) arrays."""
    path = _path(directory)
    if fileio.isdir(str(path)) and fileio.listdir(str(path)) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass overwrite=True to replace it")
    fileio.makedirs(str(path))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / VARIABLES_DIR, variables, force=overwrite)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        description = {"model": model_config(model, kind), "metadata": metadata or {}}
        fileio.write_text(str(path / MODEL_FILE), json.dumps(description, indent=2, sort_keys=True))
    return path


def read_description(directory: str | os.PathLike) -> tuple[nn.Module, str, dict[str, Any]]:
    """The model a directory written by :func:`save_model` describes, its kind and its metadata;
    nothing else is read. ValueError naming ``model.json`` and what is wrong when it describes no model."""
    path = _path(directory)
    description_file = path / MODEL_FILE
    if not fileio.exists(str(description_file)):
        raise FileNotFoundError(f"{path} is not a saved model: {MODEL_FILE} is missing")
    try:
        description = json.loads(fileio.read_text(str(description_file)))
        model = model_from_config(description["model"])
        metadata = description.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ValueError("field 'metadata' is not an object")
    except (ValueError, KeyError, TypeError, AttributeError) as error:  # JSONDecodeError is a ValueError
        reason = error.args[0] if error.args else type(error).__name__
        raise ValueError(f"{description_file}: not a model description ({reason})") from None
    return model, description["model"]["kind"], metadata


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model saved by :func:`save_model` and restores its variables onto this process's
    first device, whatever the device count of the run that saved them."""
    path = _path(directory)
    model, kind, _ = read_description(path)
    checkpointer = ocp.StandardCheckpointer()
    abstract = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    saved = set(checkpointer.metadata(path / VARIABLES_DIR).item_metadata.keys())
    if "extra" in saved:  # the method's state (shapes from the model, never from the files)
        method = methods.get(kind) if kind in methods.names() else None
        extra = None if method is None else jax.eval_shape(lambda p: method.init_extra(model, p), abstract["params"])
        if extra is None:
            raise ValueError(f"{path / VARIABLES_DIR}: holds an 'extra' collection, which a "
                             f"{type(model).__name__} does not have")
        abstract = {**abstract, "extra": extra}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    variables = checkpointer.restore(path / VARIABLES_DIR, target)
    return model, variables
