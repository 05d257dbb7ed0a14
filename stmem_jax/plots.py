"""Figures: masked reconstruction, training curves, 2-D embedding maps (matplotlib, Agg)."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # not "findfont: ... not found" per font
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from stmem_jax.core import fileio  # noqa: E402
from stmem_jax.core.leads import LEAD_NAMES  # noqa: E402


def reconstruction_figure(series: np.ndarray, pred: np.ndarray, mask: np.ndarray, path: str, *,
                          lead_ids: Sequence[int], show: Sequence[int] = (0, 1, 6), fs: int = 250,
                          title: str = "") -> str:
    """One example: per shown lead, the original, the visible input and the prediction of the
    masked patches. ``series`` (C, T), ``pred`` (C, N, P) on the input's scale, ``mask`` (C, N).
    Writes a PNG."""
    channels, length = series.shape
    patches = series.reshape(channels, pred.shape[1], -1)
    show = [c for c in show if c < channels] or [0]
    fig, axes = plt.subplots(len(show), 1, figsize=(12, 2.2 * len(show)), sharex=True, squeeze=False)
    t = np.arange(length) / fs
    for ax, c in zip(axes[:, 0], show):
        removed = np.repeat(mask[c] > 0.5, patches.shape[-1])
        ax.plot(t, series[c], color="0.75", lw=1.0, label="original")
        ax.plot(t, np.where(removed, np.nan, series[c]), color="tab:blue", lw=1.0, label="visible input")
        ax.plot(t, np.where(removed, pred[c].reshape(-1), np.nan), color="tab:red", lw=1.0, label="prediction")
        ax.set_ylabel(LEAD_NAMES[lead_ids[c]] if lead_ids[c] < len(LEAD_NAMES) else f"lead {lead_ids[c]}")
    axes[0, 0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[-1, 0].set_xlabel("time (s)")
    fig.suptitle(title or "masked reconstruction")
    fig.tight_layout()
    return _save(fig, path)


def training_curve(metrics_file: str, path: str, keys: Sequence[str] = ("loss",)) -> str:
    """Plots ``keys`` against step from a ``metrics.jsonl`` file (one line per split and step)."""
    rows = [json.loads(line) for line in fileio.read_text(metrics_file).splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(7, 4))
    for split in sorted({r.get("split", "train") for r in rows}):
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if r.get("split", "train") == split and key in r]
            if points:
                ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=f"{split} {key}")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def embedding_map(features: np.ndarray, labels: Sequence[str], path: str, title: str = "") -> str:
    """2-D PCA map of encoder features coloured by class."""
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(6, 5))
    for name in sorted(set(labels)):
        picked = np.asarray([lab == name for lab in labels])
        ax.scatter(xy[picked, 0], xy[picked, 1], s=8, alpha=0.7, label=name)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(markerscale=2, fontsize=8)
    ax.set_title(title or "encoder embeddings (PCA)")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str) -> str:
    fileio.makedirs(fileio.dirname(fileio.absolute(path)))
    with fileio.open(path, "wb") as f:
        fig.savefig(f, dpi=110, format=fileio.basename(path).rpartition(".")[2] or "png")
    plt.close(fig)
    return path
