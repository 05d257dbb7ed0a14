"""Python API for notebooks: load an encoder or a pre-training model, embed ECG arrays, and
reconstruct a masked ECG.

    from stmem_jax import api
    encoder, variables = api.load_encoder("runs/pretrain")           # or a public .pth file
    features = api.embed(encoder, variables, ecgs, fs=500, leads=("I", "II", "V1"))
    model, pre_vars = api.load_pretraining_model("runs/pretrain")
    result = api.reconstruct(model, pre_vars, ecgs[0], fs=500, leads="12")
    api.plot_reconstruction(result, "reconstruction.png")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from stmem_jax.checkpoint import MODEL_FILE, load_model
from stmem_jax.leads import lead_indices
from stmem_jax.models import PRETRAINING_KINDS, model_config
from stmem_jax.plots import reconstruction_figure
from stmem_jax.st_mem import STMEM
from stmem_jax.train.downstream import crop_outputs, load_encoder

__all__ = ["load_encoder", "load_pretraining_model", "prepare", "embed", "reconstruct", "plot_reconstruction"]

FS = 250


def load_pretraining_model(path: str) -> tuple[Any, dict[str, Any]]:
    """The whole pre-training model (encoder and decoder) from a stmem-pretrain workdir, a saved
    model directory or a public full-model ``.pth`` file."""
    if os.path.isfile(path):
        from stmem_jax.convert import load_torch_checkpoint

        model, variables = load_torch_checkpoint(path)
    else:
        directory = os.path.join(path, "model") if os.path.isfile(os.path.join(path, "model", MODEL_FILE)) else path
        model, variables = load_model(directory)
    if model_config(model)["kind"] not in PRETRAINING_KINDS:
        raise ValueError(f"{path} holds a {type(model).__name__}, not a pre-training model (it has no decoder)")
    return model, variables


def prepare(ecgs: np.ndarray, fs: float, *, crop_samples: int = 2250, crops: int = 3, bandpass: bool = True
            ) -> np.ndarray:
    """ECGs (B, C, T) or (C, T) in mV at ``fs`` Hz -> model inputs (B, crops, C, crop_samples): resampled
    to 250 Hz, band-filtered (0.67-40 Hz, as stmem-prepare does), cut into ``crops`` equally spaced
    crops, each z-scored over leads and time."""
    from data_prep.signals import Processing, band_filter, resample

    ecgs = np.asarray(ecgs, np.float64)
    if ecgs.ndim == 2:
        ecgs = ecgs[None]
    if ecgs.ndim != 3:
        raise ValueError(f"expected ECGs of shape (batch, leads, samples), got {ecgs.shape}")
    signal = resample(ecgs, fs, FS)
    if bandpass:
        signal = band_filter(signal, FS, Processing())
    length = signal.shape[-1]
    if length < crop_samples:
        raise ValueError(f"ECGs last {length / FS:.2f} s at 250 Hz; the model needs {crop_samples / FS:.2f} s")
    starts = np.linspace(0, length - crop_samples, crops).round().astype(int) if crops > 1 else [(length - crop_samples) // 2]
    windows = np.stack([signal[..., s:s + crop_samples] for s in starts], axis=1)
    mean = windows.mean(axis=(2, 3), keepdims=True)
    std = windows.std(axis=(2, 3), keepdims=True)
    return np.where(std > 0, (windows - mean) / np.where(std > 0, std, 1), 0.0).astype(np.float32)


def embed(encoder, variables: dict[str, Any], ecgs: np.ndarray, fs: float, leads: str | Sequence[str] = "12", *,
          batch_size: int = 64, crops: int = 3) -> np.ndarray:
    """Pooled encoder features (B, W) of raw ECGs whose rows are ``leads`` (names, any order), the
    mean over ``crops`` equally spaced crops."""
    inputs = prepare(ecgs, fs, crop_samples=encoder.seq_len, crops=crops)
    lead_ids = lead_indices(leads, inputs.shape[2])
    features_of = jax.jit(lambda p, s: crop_outputs(encoder.clone(num_classes=0), p, s, lead_ids).mean(axis=1))
    params = {"encoder": variables["params"]["encoder"]}
    return np.concatenate([np.asarray(features_of(params, inputs[i:i + batch_size]))
                           for i in range(0, len(inputs), batch_size)])


def reconstruct(model, variables: dict[str, Any], ecg: np.ndarray, fs: float, leads: str | Sequence[str] = "12", *,
                mask_ratio: float = 0.75, seed: int = 0) -> dict[str, Any]:
    """Masks one ECG (C, T) at random and reconstructs it: the model input (C, T'), the prediction
    (C, N, P), the mask (C, N), the loss and the lead indices."""
    if not isinstance(model, STMEM):
        raise ValueError(f"reconstruct shows ST-MEM's per-lead reconstruction; got {type(model).__name__}")
    series = prepare(ecg, fs, crop_samples=model.seq_len, crops=1)[:, 0]
    lead_ids = lead_indices(leads, series.shape[1])
    noise = jax.random.uniform(jax.random.key(seed), model.noise_shape(series.shape))
    out = model.apply(variables, series, mask_ratio=mask_ratio, noise=noise, leads=lead_ids)
    return {"series": series[0], "pred": np.asarray(out["pred"][0], np.float32), "mask": np.asarray(out["mask"][0]),
            "loss": float(out["loss"]), "lead_ids": lead_ids, "norm_pix_loss": model.norm_pix_loss}


def plot_reconstruction(result: dict[str, Any], path: str, show: Sequence[int] = (0, 1, 6)) -> str:
    """PNG of :func:`reconstruct`'s result for the rows ``show``; returns the path."""
    return reconstruction_figure(result["series"], result["pred"], result["mask"], path, lead_ids=result["lead_ids"],
                                 show=show, norm_pix_loss=result["norm_pix_loss"],
                                 title=f"masked reconstruction (loss {result['loss']:.3f})")
