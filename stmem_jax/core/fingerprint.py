"""Content fingerprints of prepared windows, to find the same ECG in two prepared folders even when a
release re-packages it (PTB-XL inside Challenge 2021: another file format, record name and gain).

A window's fingerprint is its *profile*: the mean |x| of each standard lead over ``BLOCKS`` equal
blocks of the window, in units of 0.1 uV (uint16; ``ABSENT`` for a lead the folder lacks). It is
a coarsely resampled, quantised copy of the window: re-quantising the source at another gain moves
it by far less than a microvolt, while two different ECGs differ by tens of microvolts somewhere.

Matching (:func:`matches`): candidates share a cell of the per-lead whole-window means on a grid of
``STEP_UV`` at one of ``PROBES`` offsets (two means closer than a quarter step always share a cell
of some offset, lead by lead, so a re-packaged window is found unless several leads sit on cell
edges at once); a candidate is confirmed when every block of every common lead agrees within
``TOLERANCE_UV``. Near-flat windows (every lead's mean |x| under ``FLAT_UV``) are never matched.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from stmem_jax.core import fileio
from stmem_jax.core.leads import LEAD_NAMES, lead_indices

FILE = "fingerprints.npz"
BLOCKS = 5
UNIT_UV = 0.1
ABSENT = np.iinfo(np.uint16).max
STEP_UV = 40.0
PROBES = 4
TOLERANCE_UV = 5.0
FLAT_UV = 20.0
KEY_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")  # the independent leads
SHAPE = (len(LEAD_NAMES), BLOCKS)


def profile(window: np.ndarray, leads) -> np.ndarray:
    """uint16 (12, BLOCKS): mean |x| of each standard lead over equal blocks of ``window`` (leads,
    samples) in mV whose rows are ``leads``; ``ABSENT`` rows for leads not stored."""
    x = np.abs(np.asarray(window, np.float64))
    blocks = np.array_split(x, BLOCKS, axis=1)
    means = np.stack([b.mean(axis=1) for b in blocks], axis=1) * 1000 / UNIT_UV
    out = np.full(SHAPE, ABSENT, np.uint16)
    out[list(lead_indices(leads))] = np.clip(np.round(means), 0, ABSENT - 1).astype(np.uint16)
    return out


def save(path: str, columns: dict[str, np.ndarray]) -> None:
    """Writes the fingerprint table (``split``, ``record_id``, ``patient_id``, ``window``,
    ``profile``; one row per example in split and shard order) atomically."""
    with fileio.atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **columns)


def load(path: str) -> dict[str, np.ndarray]:
    with fileio.open(path, "rb") as file, np.load(file, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def concatenate(tables: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    keys = ("split", "record_id", "patient_id", "window", "profile")
    if not tables:
        return {"split": np.array([], str), "record_id": np.array([], str), "patient_id": np.array([], str),
                "window": np.zeros(0, np.int32), "profile": np.zeros((0, *SHAPE), np.uint16)}
    return {k: np.concatenate([t[k] for t in tables]) for k in keys}


def _common_leads(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    present = [(p != ABSENT).all(axis=(0, 2)) if len(p) else np.ones(len(LEAD_NAMES), bool) for p in (a, b)]
    return np.flatnonzero(present[0] & present[1])


def matches(a: np.ndarray, b: np.ndarray) -> list[tuple[int, int]]:
    """(row of ``a``, row of ``b``) of every pair of profiles of the same window (sorted)."""
    leads = _common_leads(a, b)
    if not len(leads) or not len(a) or not len(b):
        return []
    key = [i for i in leads if LEAD_NAMES[i] in KEY_LEADS] or list(leads)
    pa, pb = (p[:, leads].astype(np.float64) * UNIT_UV for p in (a, b))
    ma, mb = (p[:, key].astype(np.float64).mean(axis=2) * UNIT_UV for p in (a, b))
    usable_a, usable_b = (m.max(axis=1) >= FLAT_UV for m in (ma, mb))
    candidates = set()
    for probe in range(PROBES):
        offset = probe * STEP_UV / PROBES
        cells_a, cells_b = (np.floor((m + offset) / STEP_UV).astype(np.int64) for m in (ma, mb))
        buckets: dict[bytes, list[int]] = defaultdict(list)
        for i in np.flatnonzero(usable_a):
            buckets[cells_a[i].tobytes()].append(int(i))
        for j in np.flatnonzero(usable_b):
            candidates.update((i, int(j)) for i in buckets.get(cells_b[j].tobytes(), ()))
    if not candidates:
        return []
    pairs = np.array(sorted(candidates))
    close = np.abs(pa[pairs[:, 0]] - pb[pairs[:, 1]]).max(axis=(1, 2)) <= TOLERANCE_UV
    return [tuple(map(int, p)) for p in pairs[close]]


def summary(table: dict[str, Any]) -> dict[str, Any]:
    """What the manifest says about a folder's fingerprint table."""
    return {"file": FILE, "windows": int(len(table["window"])), "blocks": BLOCKS, "unit_uv": UNIT_UV,
            "method": "mean |x| per standard lead over equal blocks of the stored window (see "
                      "stmem_jax.core.fingerprint)"}
