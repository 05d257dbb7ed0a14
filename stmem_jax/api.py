"""Python API for notebooks: load an encoder or a pre-training model, embed ECG arrays, and
reconstruct a masked ECG.

    from stmem_jax import api
    encoder, variables = api.load_encoder("runs/pretrain")           # or a public .pth file
    features = api.embed(encoder, variables, ecgs, fs=500, leads=("I", "II", "V1"))
    ecg = api.read_ecg("exam.dcm")                                    # DICOM, HL7 aECG, MUSE, EDF, WFDB, ...
    features = api.embed(encoder, variables, [ecg])
    model, pre_vars = api.load_pretraining_model("runs/pretrain")
    result = api.reconstruct(model, pre_vars, ecgs[0], fs=500, leads="12")
    api.plot_reconstruction(result, "reconstruction.png")

Recordings go through a recipe (``stmem_jax.core.recipe``; the authors', ``AUTHORS``, unless
``recipe`` says otherwise: give a model the recipe it was trained with, e.g. ``Recipe()``, stmem-jax's,
for the shipped encoder): resampled, cropped, band-filtered (each crop under the authors' recipe),
z-scored, exactly as the input pipeline feeds a model (:func:`model_inputs` shows what it sees).
Arrays are taken as one window and cropped over their whole length; ECGs read from files are cut
into windows as stmem-prepare cuts them, and their first usable window is used (as
``stmem-embed --files`` does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from stmem_jax import infer
from stmem_jax.core.ecgfile import ECG, ECGFileError, read_ecg
from stmem_jax.core.leads import LEAD_NAMES, lead_indices
from stmem_jax.core import recipe as recipe_lib
from stmem_jax.core.recipe import AUTHORS, Recipe, window_inputs
from stmem_jax.core.signal import RecordError
from stmem_jax.infer import load_encoder, load_pretraining_model
from stmem_jax.plots import reconstruction_figure

__all__ = ["ECG", "Recipe", "AUTHORS", "read_ecg", "load_encoder", "load_pretraining_model", "model_inputs", "embed",
           "reconstruct", "plot_reconstruction"]


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
          recipe: Recipe = AUTHORS) -> np.ndarray:
    """Pooled encoder features (B, W), the mean over the evaluation crops, of raw ECGs (B, C, T) or
    (C, T) in mV at ``fs`` Hz whose rows are ``leads`` (names, any order; default the first C
    standard leads), or of ECGs from :func:`read_ecg` (``leads`` selects among theirs; default all
    of the first one's)."""
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
                mask_ratio: float | None = None, seed: int = 0, recipe: Recipe = AUTHORS) -> dict[str, Any]:
    """Masks one ECG (C, T) at random and reconstructs its centre crop with a masked autoencoder
    (ST-MEM, MTAE, MLAE; ``mask_ratio`` default: the model's): the model input (C', T'), the
    prediction on the input's scale (C', N, P), the mask (C', N), the loss and the lead indices of
    the rows (MTAE's and MLAE's rows are all their leads, the missing ones zero)."""
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
