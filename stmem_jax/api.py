"""Python API for notebooks: load an encoder or a pre-training model, embed ECG arrays, and
reconstruct a masked ECG.

    from stmem_jax import api
    encoder, variables = api.load_encoder("runs/pretrain")           # or a public .pth file; remembers its recipe
    features = api.embed(encoder, variables, ecgs, fs=500, leads=("I", "II", "V1"))
    ecg = api.read_ecg("exam.dcm")                                    # DICOM, HL7 aECG, MUSE, EDF, WFDB, ...
    features = api.embed(encoder, variables, [ecg])
    model, pre_vars = api.load_pretraining_model("runs/pretrain")
    result = api.reconstruct(model, pre_vars, ecgs[0], fs=500, leads="12")
    api.plot_reconstruction(result, "reconstruction.png")

Recordings go through the recipe the model was trained on (``stmem_jax.core.recipe``; saved with
it, e.g. a CPC encoder pre-trained at 100 Hz gets 100 Hz crops, the shipped encoder stmem-jax's
recipe): resampled, cropped, band-filtered (each crop under the authors' recipe), z-scored, exactly
as the input pipeline feeds a model (:func:`model_inputs` shows what it sees). :func:`load_encoder`
and :func:`load_pretraining_model` remember the recipe for the variables they return, and
:func:`embed` and :func:`reconstruct` use it; ``recipe=`` overrides it (:func:`input_recipe` reads it
from a path); variables not loaded here get the authors' recipe (``AUTHORS``) at the model's crop
length. Arrays are taken as one window and cropped over their whole length; ECGs read from files
are cut into windows as stmem-prepare cuts them, and their first usable window is used (as
``stmem-embed --files`` does).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from stmem_jax import infer
from stmem_jax.core.ecgfile import ECG, ECGFileError, read_ecg
from stmem_jax.core.leads import LEAD_NAMES, lead_indices
from stmem_jax.core import recipe as recipe_lib
from stmem_jax.core.recipe import AUTHORS, Recipe, authors_for, window_inputs
from stmem_jax.core.signal import RecordError
from stmem_jax.plots import reconstruction_figure

__all__ = ["ECG", "Recipe", "AUTHORS", "read_ecg", "load_encoder", "load_pretraining_model", "input_recipe",
           "model_inputs", "embed", "reconstruct", "plot_reconstruction"]

# id of the first array of variables returned by a load function -> (a weak reference to it, its recipe)
_RECIPES: dict[int, tuple[weakref.ref, Recipe]] = {}


def _remember(loaded: tuple[Any, dict[str, Any]], recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    """``loaded`` (model, variables), with ``recipe`` recorded for the variables (while they live)."""
    first = jax.tree.leaves(loaded[1])[0]
    key = id(first)
    _RECIPES[key] = (weakref.ref(first, lambda _, key=key: _RECIPES.pop(key, None)), recipe)
    return loaded


def _recipe_of(variables: dict[str, Any], model) -> Recipe:
    """The recipe recorded for ``variables`` by a load function, else the authors' at the model's crop length."""
    leaves = jax.tree.leaves(variables)
    entry = _RECIPES.get(id(leaves[0])) if leaves else None
    return entry[1] if entry is not None and entry[0]() is leaves[0] else \
        authors_for(model)


def load_encoder(path: str) -> tuple[Any, dict[str, Any]]:
    """The classification encoder (no head) and its variables of the weights at ``path`` (a
    stmem-pretrain workdir, a model directory, a downstream run's ``model/``, a public ``.pth``)."""
    encoder, variables = infer.load_encoder(path)
    return _remember((encoder, variables), infer.input_recipe(path, encoder, ("encoder", "model")))


def load_pretraining_model(path: str) -> tuple[Any, dict[str, Any]]:
    """The whole pre-training model (encoder and decoder) at ``path`` and its variables."""
    model, variables = infer.load_pretraining_model(path)
    return _remember((model, variables), infer.input_recipe(path, model, ("model",)))


def input_recipe(path: str) -> Recipe:
    """The recipe the model at ``path`` was trained on (what :func:`embed` feeds it)."""
    return infer.input_recipe(path)


def model_inputs(ecgs: np.ndarray, fs: float, *, recipe: Recipe = AUTHORS, crop_samples: int | None = None,
                 crops: int | None = None, leads: str | Sequence[str] | None = None) -> np.ndarray:
    """What the model sees: ECGs (B, C, T) or (C, T) in mV at ``fs`` Hz -> model inputs (B, crops, C,
    crop_samples), exactly as the input pipeline feeds a window prepared under ``recipe`` (each
    recording taken as one window): resampled to the recipe's rate as it says, cut into ``crops``
    crops (default: the recipe's evaluation crops; one crop is centred), band-filtered where it says
    (the authors': each crop), each z-scored over leads and time. A NaN or infinite sample is an
    error naming the example and lead (``leads`` names the rows), unless its gap is short enough for
    ``recipe.max_gap_s`` to interpolate it."""
    names = None if leads is None else [LEAD_NAMES[i] for i in lead_indices(leads)]
    return recipe_lib.model_inputs(ecgs, fs, recipe, crop_samples=crop_samples, count=crops, lead_names=names)


def embed(encoder, variables: dict[str, Any], ecgs: np.ndarray | ECG | Sequence[ECG], fs: float | None = None,
          leads: str | Sequence[str] | None = None, *, batch_size: int = 64, crops: int | None = None,
          recipe: Recipe | None = None) -> np.ndarray:
    """Pooled encoder features (B, W), the mean over the evaluation crops, of raw ECGs (B, C, T) or
    (C, T) in mV at ``fs`` Hz whose rows are ``leads`` (names, any order; default the first C
    standard leads), or of ECGs from :func:`read_ecg` (``leads`` selects among theirs; default all
    of the first one's), through the model's recipe (see the module docstring)."""
    recipe = recipe or _recipe_of(variables, encoder)
    if isinstance(ecgs, ECG) or (isinstance(ecgs, Sequence) and ecgs and isinstance(ecgs[0], ECG)):
        inputs, leads = _ecg_inputs([ecgs] if isinstance(ecgs, ECG) else list(ecgs), leads, recipe, encoder.seq_len,
                                    crops)
    elif fs is None:
        raise ValueError("embed needs fs (the sampling rate in Hz) for arrays")
    else:
        inputs = model_inputs(ecgs, fs, recipe=recipe, crop_samples=encoder.seq_len, crops=crops, leads=leads)
    lead_ids = lead_indices(leads, inputs.shape[2])
    params = {"encoder": variables["params"]["encoder"]}
    return infer.map_batches(infer.features_fn(encoder, lead_ids), params, inputs, batch_size)


def _ecg_inputs(ecgs: list[ECG], leads, recipe: Recipe, crop_samples: int, crops: int | None
                ) -> tuple[np.ndarray, tuple[str, ...]]:
    """(B, crops, C, crop_samples) of each ECG's first usable window, and the leads of the rows."""
    wanted = ecgs[0].leads if leads is None else tuple(LEAD_NAMES[i] for i in lead_indices(leads))
    inputs = []
    for ecg in ecgs:
        try:
            inputs.append(window_inputs(ecg.as_signal(), wanted, recipe, crop_samples=crop_samples, count=crops)[0][1])
        except RecordError as error:
            raise ECGFileError(ecg.record_id, str(error)) from None
    return np.stack(inputs), wanted


def reconstruct(model, variables: dict[str, Any], ecg: np.ndarray, fs: float, leads: str | Sequence[str] = "12", *,
                mask_ratio: float | None = None, seed: int = 0, recipe: Recipe | None = None) -> dict[str, Any]:
    """Masks one ECG (C, T) at random and reconstructs its centre crop with a masked autoencoder
    (ST-MEM, MTAE, MLAE; ``mask_ratio`` default: the model's): the model input (C', T'), the
    prediction on the input's scale (C', N, P), the mask (C', N), the loss and the lead indices of
    the rows (MTAE's and MLAE's rows are all their leads, the missing ones zero)."""
    recipe = recipe or _recipe_of(variables, model)
    if not hasattr(model, "reconstruction"):
        raise ValueError(f"reconstruct needs a masked autoencoder's pre-training model; got {type(model).__name__}")
    model = model if mask_ratio is None else model.clone(mask_ratio=mask_ratio)
    series = model_inputs(ecg, fs, recipe=recipe, crop_samples=model.seq_len, crops=1, leads=leads)[:, 0]
    lead_ids = lead_indices(leads, series.shape[1])
    noise = jax.random.uniform(jax.random.key(seed), model.noise_shape(series.shape))
    out = jax.jit(functools.partial(model.apply, leads=lead_ids))(variables, series, noise=noise)
    series, pred, mask, rows = model.reconstruction(series, out, lead_ids)
    return {"series": np.asarray(series[0]), "pred": np.asarray(pred[0], np.float32), "mask": np.asarray(mask[0]),
            "loss": float(out["loss"]), "lead_ids": tuple(rows)}


def plot_reconstruction(result: dict[str, Any], path: str, show: Sequence[int] = (0, 1, 6)) -> str:
    """PNG of :func:`reconstruct`'s result for the rows ``show``; returns the path."""
    return reconstruction_figure(result["series"], result["pred"], result["mask"], path, lead_ids=result["lead_ids"],
                                 show=show, title=f"masked reconstruction (loss {result['loss']:.3f})")
