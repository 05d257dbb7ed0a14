"""A model and its variables as one directory: orbax-written variables plus ``model.json``."""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import orbax.checkpoint as ocp
from etils import epath

from stmem_jax.core import fileio
from stmem_jax.models import init_variables, model_config, model_from_config

MODEL_FILE = "model.json"
VARIABLES_DIR = "variables"


def _path(directory: str | os.PathLike) -> epath.Path:
    return epath.Path(fileio.absolute(directory))


def save_model(directory: str | os.PathLike, model: nn.Module, variables: dict[str, Any], *,
               overwrite: bool = False, metadata: dict[str, Any] | None = None) -> epath.Path:
    """Writes ``variables`` with orbax and the model description, so :func:`load_model` (and the
    trainers) can rebuild both. Refuses to replace an existing directory unless ``overwrite``.
    In a multi-process run every process calls it with the same (global) arrays."""
    path = _path(directory)
    if fileio.isdir(str(path)) and fileio.listdir(str(path)) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass overwrite=True to replace it")
    fileio.makedirs(str(path))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path / VARIABLES_DIR, variables, force=overwrite)
    checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        description = {"model": model_config(model), "metadata": metadata or {}}
        fileio.write_text(str(path / MODEL_FILE), json.dumps(description, indent=2, sort_keys=True))
    return path


def load_model(directory: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuilds the model saved by :func:`save_model` and restores its variables onto this process's
    first device, whatever the device count of the run that saved them."""
    path = _path(directory)
    description_file = path / MODEL_FILE
    if not fileio.exists(str(description_file)):
        raise FileNotFoundError(f"{path} is not a saved model: {MODEL_FILE} is missing")
    try:
        description = json.loads(fileio.read_text(str(description_file)))
        model = model_from_config(description["model"])
    except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
        reason = error.args[0] if error.args else type(error).__name__
        raise ValueError(f"{description_file}: not a model description ({reason})") from None
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          jax.eval_shape(lambda: init_variables(model, jax.random.key(0))))
    variables = ocp.StandardCheckpointer().restore(path / VARIABLES_DIR, target)
    return model, variables
