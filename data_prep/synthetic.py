"""Synthetic 12-lead ECGs from a moving heart dipole, written in PTB-XL's (or MIMIC-IV-ECG's) layout.

Model. The heart is one current dipole d(t) at the origin of a torso frame (x: the patient's left,
y: towards the feet, z: anterior). Every beat adds lobes v * g((t - mu) / s) to d, g a Gaussian
(or flat-topped) bump with separate rise and fall widths and v a 3-D vector: two atrial lobes
(P wave), three or four ventricular lobes (the QRS loop), one T-wave lobe and, in injury and
ischaemia, a flat-topped ST lobe. Electrode e at r_e sees the infinite-medium dipole potential
K r_e . d / |r_e|^3 plus its own noise, baseline wander (< 0.5 Hz) and mains hum; the 12 leads are
differences of these potentials, so Einthoven's and Goldberger's laws hold exactly. K makes lead
I's lead vector (1, 0, 0) for the nominal torso, so d is in mV as lead I would see it.

Diagnostic classes (PTB-XL SCP codes):
  NORM   normal.
  IMI    inferior MI: initial QRS forces turned superior (Q waves in II, III, aVF), an inferior
         ST injury vector (ST elevation in II, III, aVF, reciprocal depression in I, aVL).
  ISCAL  anterolateral ischaemia: ST and T vectors turned away from the lateral wall
         (ST depression and T inversion in I, aVL, V5, V6).
  CRBBB  a late right-anterior lobe from the slowly activated right ventricle (QRS >= 120 ms,
         rsR' in V1-V2, broad slurred S in I and V6), discordant T in V1.
  LVH    a large leftward-posterior LV lobe (tall R in aVL, V5, V6; deep S in V1, V2).
Rhythms, drawn independently of the class: SR (sinus, with respiratory arrhythmia) and AFIB (no
P waves, irregularly irregular RR, 4-9 Hz fibrillatory waves mostly seen in V1).

Files: ``write_ptbxl`` writes PTB-XL's layout, ``write_mimic_iv_ecg`` MIMIC-IV-ECG's; their WFDB
files come from ``write_wfdb``, which writes what ``wfdb.wrsamp`` would, byte for byte, but about
50 times faster. ``write_cardiosoft_xml`` writes one record as GE CardioSoft XML (UK Biobank's format).

Randomness: patient p's parameters come from ``default_rng([seed, p, tag])`` and record i's from
``default_rng([seed, i])``, so record i never depends on how many records are generated.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pandas as pd
from scipy.signal import resample_poly
from tqdm import tqdm

from data_prep.writer import worker_pool
from stmem_jax.core import fileio
from stmem_jax.core.leads import LEAD_NAMES

WFDB_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")  # PTB-XL's spelling
CLASSES = ("NORM", "IMI", "ISCAL", "CRBBB", "LVH")
DEFAULT_CLASS_PROBS = {"NORM": 0.4, "IMI": 0.15, "ISCAL": 0.15, "CRBBB": 0.15, "LVH": 0.15}
AFIB_PROB = 0.2
FS_HR, FS_LR, DURATION_S = 500, 100, 10.0
MARKER = "synthetic.json"  # written last by write_ptbxl: what the directory holds
PARTIAL = "synthetic.partial.json"  # written first, removed last: a generation under way or interrupted
_VERSION = 1
_TAG_VISITS, _TAG_FOLDS, _TAG_PATIENT = 7877, 7883, 7919  # separate patient-level random streams

# Electrodes RA, LA, LL, V1..V6 in cm from the heart centre (x left, y feet, z anterior).
_LIMB_RADIUS = 25.0
_LIMB_ANGLES = np.radians([-150.0, -30.0, 90.0])  # frontal plane: 0 = left, 90 = feet
_ELECTRODES = np.vstack([
    np.stack([_LIMB_RADIUS * np.cos(_LIMB_ANGLES), _LIMB_RADIUS * np.sin(_LIMB_ANGLES), np.zeros(3)], 1),
    1.35 * np.array([[-6, -3, 8], [-1, -3, 9], [2.5, -1.5, 9], [6, 0, 8], [10, 0, 5], [12, 0, 0]], float),
])
_K = _LIMB_RADIUS ** 2 / math.sqrt(3)

# Leads from the potentials (RA, LA, LL, V1..V6); V leads against Wilson's central terminal.
_LEAD_MATRIX = np.zeros((12, 9))
_LEAD_MATRIX[:6, :3] = [[-1, 1, 0], [-1, 0, 1], [0, -1, 1], [1, -.5, -.5], [-.5, 1, -.5], [-.5, -.5, 1]]
_LEAD_MATRIX[6:, :3] = -1 / 3
_LEAD_MATRIX[6:, 3:] = np.eye(6)

# Beat lobes: group, centre (ms from the R wave), rise and fall widths (ms), flat top, vector (mV).
_P, _QRS, _ST, _T = range(4)
_NORMAL = np.array([
    (_P, -165, 20, 20, 0, 0.04, 0.12, 0.06),  # right atrium
    (_P, -130, 20, 18, 0, 0.1, 0.06, -0.05),  # left atrium
    (_QRS, -25, 8, 8, 0, -0.12, 0.05, 0.15),  # septum: rightwards and forwards
    (_QRS, 0, 11, 10, 0, 0.9, 0.75, -0.2),  # left-ventricular free wall
    (_QRS, 26, 9, 10, 0, -0.15, -0.2, -0.2),  # basal segments
    (_T, 280, 60, 38, 0, 0.2, 0.22, 0.25),  # repolarisation (centre for RR = 1 s)
], float)
_SEPTUM, _LV, _TWAVE = 2, 3, 5
_WINDOW_S = (-0.4, 0.75)  # extent of one beat's lobes around its R wave
_AXES = (("SAB", -90), ("ALAD", -45), ("LAD", -30), ("MID", 90), ("RAD", 120), ("ARAD", 181))  # code, upper angle

# scp_statements.csv: the codes generated plus some other PTB-XL codes.
_STATEMENT_COLUMNS = ("description", "diagnostic", "form", "rhythm", "diagnostic_class",
                      "diagnostic_subclass", "Statement Category")
_STATEMENTS = {  # code: description, diagnostic, form, rhythm, class, subclass, category
    "NDT": ("non-diagnostic T abnormalities", 1, 1, None, "STTC", "STTC", "other ST-T descriptive statements"),
    "NST_": ("non-specific ST changes", 1, 1, None, "STTC", "NST_",
             "Basic roots for coding ST-T changes and abnormalities"),
    "NORM": ("normal ECG", 1, None, None, "NORM", "NORM", "Normal/abnormal"),
    "IMI": ("inferior myocardial infarction", 1, None, None, "MI", "IMI", "Myocardial Infarction"),
    "ASMI": ("anteroseptal myocardial infarction", 1, None, None, "MI", "AMI", "Myocardial Infarction"),
    "ISCAL": ("ischemic in anterolateral leads", 1, None, None, "STTC", "ISCA", "Ischemic ST-T changes"),
    "CRBBB": ("complete right bundle branch block", 1, None, None, "CD", "CRBBB",
              "Intraventricular and intra-atrial Conduction disturbances"),
    "CLBBB": ("complete left bundle branch block", 1, None, None, "CD", "CLBBB",
              "Intraventricular and intra-atrial Conduction disturbances"),
    "LAFB": ("left anterior fascicular block", 1, None, None, "CD", "LAFB/LPFB",
             "Intraventricular and intra-atrial Conduction disturbances"),
    "1AVB": ("first degree AV block", 1, None, None, "CD", "_AVB", "AV conduction disturbances"),
    "LVH": ("left ventricular hypertrophy", 1, None, None, "HYP", "LVH", "Hypertrophies"),
    "RVH": ("right ventricular hypertrophy", 1, None, None, "HYP", "RVH", "Hypertrophies"),
    "LVOLT": ("low QRS voltages in the frontal and horizontal leads", None, 1, None, None, None,
              "other"),
    "QWAVE": ("Q waves present", None, 1, None, None, None, "other"),
    "SR": ("sinus rhythm", None, None, 1, None, None, "Statements related to the cardiac rhythm"),
    "AFIB": ("atrial fibrillation", None, None, 1, None, None, "Statements related to the cardiac rhythm"),
    "STACH": ("sinus tachycardia", None, None, 1, None, None, "Statements related to the cardiac rhythm"),
    "SBRAD": ("sinus bradycardia", None, None, 1, None, None, "Statements related to the cardiac rhythm"),
}

_DATABASE_COLUMNS = (
    "ecg_id", "patient_id", "age", "sex", "height", "weight", "nurse", "site", "device",
    "recording_date", "report", "scp_codes", "heart_axis", "infarction_stadium1",
    "infarction_stadium2", "validated_by", "second_opinion", "initial_autogenerated_report",
    "validated_by_human", "baseline_drift", "static_noise", "burst_noise", "electrodes_problems",
    "extra_beats", "pacemaker", "strat_fold", "filename_lr", "filename_hr")
_DEVICES = ("CS-12   E", "AT-6 C 5.5", "AT-60    3", "CS100    3")


def _class_table(class_probs: dict | None) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Validated (codes, probabilities summing to 1) from a {code: weight} dict."""
    probs = DEFAULT_CLASS_PROBS if class_probs is None else class_probs
    unknown = set(probs) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; known: {', '.join(CLASSES)}")
    weights = np.array([float(probs[c]) for c in probs])
    if (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"class_probs must be non-negative with a positive sum, got {probs}")
    return tuple(probs), tuple((weights / weights.sum()).tolist())


def _rotate(v: np.ndarray, frontal: np.ndarray | float, horizontal: float = 0.0) -> np.ndarray:
    """Rotates vectors (..., 3) by `frontal` radians about z (turning x towards the feet), then by
    `horizontal` radians about y (turning z towards x)."""
    c, s = np.cos(frontal), np.sin(frontal)
    x, y = v[..., 0] * c - v[..., 1] * s, v[..., 0] * s + v[..., 1] * c
    ch, sh = math.cos(horizontal), math.sin(horizontal)
    return np.stack([x * ch + v[..., 2] * sh, y, v[..., 2] * ch - x * sh], -1)


def _class_lobes(diagnostic: str, rng: np.random.Generator) -> np.ndarray:
    """The lobe table of one patient with the given diagnostic class (random severity)."""
    lobes, extra, u = _NORMAL.copy(), [], rng.uniform
    if diagnostic == "IMI":
        lobes[_SEPTUM] = (_QRS, -18, 12, 10, 0, 0.15, -u(0.35, 0.6), 0.15)  # necrotic inferior wall
        lobes[_LV, 6] *= u(0.2, 0.45)
        st = u(0.12, 0.3)
        extra.append((_ST, 170, 110, 110, 1, -0.15 * st, st, 0.05 * st))
    elif diagnostic == "ISCAL":
        st, t = u(0.08, 0.2), u(0.2, 0.4)
        extra.append((_ST, 170, 110, 110, 1, -0.8 * st, 0.25 * st, -0.3 * st))
        lobes[_TWAVE, 5:] = (-0.8 * t, 0.35 * t, -0.45 * t)
    elif diagnostic == "CRBBB":
        r = u(0.6, 0.95)
        extra.append((_QRS, u(62, 75), 20, 22, 0, -0.55 * r, 0.1 * r, 0.8 * r))  # late right ventricle
        lobes[_TWAVE, 5:] = (0.25, 0.3, -0.15)
    elif diagnostic == "LVH":
        g = u(1.35, 1.6)  # the wider QRS of LVH is in the patient's w_qrs
        lobes[_LV, 5:] = (1.1 * g, 0.45 * g, -0.75 * g)
    elif diagnostic != "NORM":
        raise ValueError(f"unknown diagnostic class {diagnostic!r}")
    return np.vstack([lobes, np.array(extra, float).reshape(-1, 8)])


def _patient_table(seed: int, num_records: int) -> list[tuple[int, int]]:
    """(patient index, visit index) of records 0..num_records-1; 1-3 consecutive records per patient."""
    table, patient = [], 0
    while len(table) < num_records:
        visits = 1 + np.random.default_rng([seed, patient, _TAG_VISITS]).choice(3, p=[0.5, 0.3, 0.2])
        table += [(patient, v) for v in range(visits)]
        patient += 1
    return table[:num_records]


def _patient(seed: int, p: int, classes: tuple) -> dict:
    """Base parameters of patient p, shared by all of their records."""
    rng = np.random.default_rng([seed, p, _TAG_PATIENT])
    u = rng.uniform
    names, probs = classes
    diagnostic = names[rng.choice(len(names), p=probs)]
    sex = int(rng.random() < 0.48)
    lobes = _class_lobes(diagnostic, rng)
    group = lobes[:, 0].astype(int)
    gains = np.exp(rng.normal(0, [0.2, 0.12, 0.0, 0.2])) * [1, 0.88 if sex else 1, 1, 1]
    lobes[:, 5:] = _rotate(lobes[:, 5:] * gains[group][:, None],
                           np.radians(rng.normal(0, 18)), np.radians(rng.normal(0, 10)))
    electrodes = _ELECTRODES * u(0.92, 1.1)
    electrodes[3:] += rng.normal(0, 0.6, (6, 3))
    measured = rng.random() < 0.33  # PTB-XL has height and weight for about a third of its records
    return {
        "patient_id": p + 1, "diagnostic": diagnostic, "sex": sex, "lobes": lobes, "electrodes": electrodes,
        "age": int(np.clip(rng.normal(50 if diagnostic == "NORM" else 65, 15), 18, 95)),
        "height": round(rng.normal(163 if sex else 176, 7)) if measured else math.nan,
        "weight": round(rng.normal(68 if sex else 82, 12)) if measured else math.nan,
        "hr": u(50, 100), "pr_ms": u(130, 200), "qtc_ms": u(380, 440),
        "w_p": u(0.85, 1.15), "w_qrs": u(0.9, 1.12) * (1.1 if diagnostic == "LVH" else 1.0),
        "noise": u(0.003, 0.02), "wander": u(0.02, 0.3), "hum": 0.03 * u(0.05, 1) ** 2,
        "mains_hz": 50.0 if rng.random() < 0.7 else 60.0, "site": float(rng.integers(0, 51)),
        "date": datetime.datetime(1984, 1, 1) + datetime.timedelta(seconds=int(u(0, 17 * 365.25 * 86400))),
    }


def _beat_times(rng: np.random.Generator, hr: float, afib: bool, duration_s: float):
    """R-wave times (s) covering the record and beat windows, and the RR interval before each."""
    rr0, n = 60.0 / hr, int((duration_s + 3.5) / 0.28)
    if afib:  # irregularly irregular: independent log-normal intervals
        spread = rng.uniform(0.15, 0.3)
        rr = np.clip(rr0 * np.exp(rng.normal(-spread ** 2 / 2, spread, n)), 0.28, 2.0)
    else:  # respiratory sinus arrhythmia
        phase = 2 * np.pi * rng.uniform(0.2, 0.35) * rr0 * np.arange(n) + rng.uniform(0, 2 * np.pi)
        rr = rr0 * (1 + rng.uniform(0.01, 0.05) * np.sin(phase) + rng.normal(0, 0.008, n))
    times = -_WINDOW_S[1] - rng.uniform(0, rr[0]) + np.concatenate([[0.0], np.cumsum(rr[1:])])
    keep = times < duration_s - _WINDOW_S[0]
    return times[keep], rr[keep]


def _dipole(lobes, r_idx, mu, rise, fall, vec, fs, num_samples) -> np.ndarray:
    """Overlap-adds every beat's lobes into the dipole d(t), shape (3, num_samples).

    ``mu``, ``rise``, ``fall`` (beats, lobes) in seconds, ``vec`` (beats, lobes, 3)."""
    lag = np.arange(round(_WINDOW_S[0] * fs), round(_WINDOW_S[1] * fs))
    z = lag / fs - mu[..., None]
    u = (z / np.where(z < 0, rise[..., None], fall[..., None])) ** 2
    g = np.exp(-0.5 * np.where(lobes[:, 4, None] > 0, u * u, u))
    beats = np.einsum("nkl,nkd->dnl", g, vec)
    idx = r_idx[:, None] + lag
    keep = (idx >= 0) & (idx < num_samples)
    return np.stack([np.bincount(idx[keep], b[keep], minlength=num_samples) for b in beats])


def _heart_axis(lobes: np.ndarray) -> str:
    """PTB-XL heart_axis code from the frontal angle of the net vector of the QRS lobes in its
    first 60 ms (the usual convention, which leaves out the late forces of a bundle branch block)."""
    qrs = lobes[(lobes[:, 0] == _QRS) & (lobes[:, 1] < 40)]
    net = (qrs[:, 5:] * (qrs[:, 2:4].sum(1) / 2)[:, None]).sum(0)
    angle = math.degrees(math.atan2(net[1], net[0]))
    return next(code for code, upper in _AXES if angle < upper)


def _record(seed: int, i: int, p: int, visit: int, classes: tuple, fs: int, duration_s: float,
            afib_prob: float) -> tuple[np.ndarray, dict]:
    """Record i (patient p's visit-th): float32 signal (12, samples) in mV and its metadata."""
    pat = _patient(seed, p, classes)
    rng = np.random.default_rng([seed, i])
    u = rng.uniform
    num_samples = round(fs * duration_s)
    t = np.arange(num_samples) / fs
    rhythm = "AFIB" if rng.random() < afib_prob else "SR"
    hr = pat["hr"] * u(0.93, 1.07) * (u(1.05, 1.35) if rhythm == "AFIB" else 1.0)
    times, rr = _beat_times(rng, min(hr, 150.0), rhythm == "AFIB", duration_s)

    lobes = pat["lobes"].copy()
    if rhythm == "AFIB":
        lobes = lobes[lobes[:, 0] != _P]
    lobes[:, 5:] = _rotate(lobes[:, 5:] * np.exp(rng.normal(0, 0.04)), np.radians(rng.normal(0, 3)))
    group = lobes[:, 0].astype(int)
    # Timing: P lobes follow the PR interval, QRS lobes the QRS width, ST/T the QT (Bazett).
    qt = pat["qtc_ms"] / 400 * np.sqrt(np.clip(rr, 0.4, 1.5))[:, None]
    stretch = np.where(group >= _ST, qt, np.where(group == _P, pat["w_p"], pat["w_qrs"]))
    mu = (lobes[:, 1] * stretch + np.where(group == _P, 160 - pat["pr_ms"], 0)) / 1000
    resp = np.sin(2 * np.pi * u(0.2, 0.35) * times + u(0, 2 * np.pi))
    gain = 1 + rng.normal(0, 0.02, mu.shape) + np.where(group == _QRS, 0.04 * resp[:, None], 0)
    vec = _rotate(lobes[:, 5:] * gain[..., None], np.radians(2 * resp + rng.normal(0, 0.5, len(times)))[:, None])
    r_idx = np.round(times * fs).astype(int)
    d = _dipole(lobes, r_idx, mu, lobes[:, 2] * stretch / 1000, lobes[:, 3] * stretch / 1000, vec, fs, num_samples)
    if rhythm == "AFIB":  # fibrillatory waves: a wandering 4-9 Hz atrial dipole pointing at V1
        f_inst = u(4.5, 8.0) + 0.5 * np.sin(2 * np.pi * u(0.05, 0.2) * t + u(0, 2 * np.pi))
        phase = 2 * np.pi * np.cumsum(f_inst) / fs + u(0, 2 * np.pi)
        wave = (np.sin(phase) + 0.3 * np.sin(2 * phase + u(0, 2 * np.pi))) \
            * (1 + 0.3 * np.sin(2 * np.pi * u(0.1, 0.4) * t + u(0, 2 * np.pi)))
        d += np.outer(np.array([-0.35, 0.45, 0.8]) * u(0.03, 0.08), wave)

    # Electrode potentials, then electrode-level noise, baseline wander and mains hum.
    electrodes = pat["electrodes"] + rng.normal(0, [[0.3]] * 3 + [[0.5]] * 6, (9, 3))
    lead_vectors = _K * electrodes / np.linalg.norm(electrodes, axis=1, keepdims=True) ** 3
    freqs = np.array([u(0.2, 0.45), u(0.05, 0.2), pat["mains_hz"]])
    basis = np.concatenate([np.cos(2 * np.pi * freqs[:, None] * t), np.sin(2 * np.pi * freqs[:, None] * t)])
    coef = rng.normal(0, 1, (9, 6)) * np.tile([pat["wander"] * u(0.5, 1.5) / 2] * 2 + [pat["hum"] * u(0.5, 1.5)], 2)
    phi = lead_vectors @ d + coef @ basis + rng.normal(0, pat["noise"] * u(0.7, 1.4), (9, num_samples))
    signal = (_LEAD_MATRIX @ phi).astype(np.float32)

    likelihood = float(rng.choice([100.0, 80.0, 50.0], p=[0.85, 0.1, 0.05]))
    date = pat["date"] + datetime.timedelta(days=visit * int(u(20, 400)), seconds=int(u(0, 86400)))
    r_peaks = r_idx[(r_idx >= 0) & (r_idx < num_samples)]
    meta = {
        "ecg_id": i + 1, "patient_id": pat["patient_id"], "age": pat["age"] + (date - pat["date"]).days // 365,
        "sex": pat["sex"], "height": pat["height"], "weight": pat["weight"],
        "diagnostic": pat["diagnostic"], "rhythm": rhythm,
        "scp_codes": {pat["diagnostic"]: likelihood, rhythm: 0.0},
        "strat_fold": _fold(seed, p), "heart_axis": _heart_axis(lobes),
        "heart_rate": float(60 / np.diff(times).mean()), "r_peaks": r_peaks,
        "recording_date": date.strftime("%Y-%m-%d %H:%M:%S"), "site": pat["site"],
        "device": _DEVICES[int(rng.integers(len(_DEVICES)))], "nurse": float(rng.integers(0, 12)),
        "validated_by_human": bool(rng.random() < 0.75),
        "report": f"{_STATEMENTS[rhythm][0]}. {_STATEMENTS[pat['diagnostic']][0].lower()}.",
    }
    return signal, meta


def _fold(seed: int, p: int) -> int:
    """strat_fold of patient p: a random permutation of 1..10 over each block of ten patients."""
    return 1 + int(np.random.default_rng([seed, p // 10, _TAG_FOLDS]).permutation(10)[p % 10])


def generate_records(num_records: int, seed: int = 0, fs: int = FS_HR, duration_s: float = DURATION_S,
                     class_probs: dict | None = None, afib_prob: float = AFIB_PROB
                     ) -> tuple[np.ndarray, list[dict]]:
    """Generates records 0..num_records-1: float32 signals (records, 12, fs * duration_s) in mV,
    leads in the standard order, and one metadata dict per record.

    Metadata: ecg_id (from 1), patient_id, age, sex (0 male, 1 female), height, weight,
    diagnostic, rhythm, scp_codes ({diagnostic: 100/80/50, rhythm: 0}), strat_fold (1..10, per
    patient), heart_axis, heart_rate (bpm), r_peaks (sample indices of the R waves in the
    record), recording_date, site, device, nurse, validated_by_human, report.
    ``class_probs`` weights the diagnostic classes (default ``DEFAULT_CLASS_PROBS``).
    """
    classes = _class_table(class_probs)
    records = [_record(seed, i, p, v, classes, fs, duration_s, afib_prob)
               for i, (p, v) in enumerate(_patient_table(seed, num_records))]
    signals = np.stack([s for s, _ in records]) if records else np.zeros((0, 12, round(fs * duration_s)), np.float32)
    return signals, [m for _, m in records]


def _record_path(ecg_id: int, resolution: str) -> str:
    folder = "records500" if resolution == "hr" else "records100"
    return f"{folder}/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_{resolution}"


def write_wfdb(path, signal: np.ndarray, fs: int, gain: float = 1000.0, leads=WFDB_LEADS) -> None:
    """Writes a (12, samples) signal in mV, rows in the order ``leads``, as WFDB record `path`
    (``.hea`` + ``.dat``) in format 16 at ``gain`` steps per mV (by default as PTB-XL stores it: 1000,
    leads I..V6). The files are byte for byte those of ``wfdb.wrsamp(..., fmt=["16"] * 12,
    adc_gain=[gain] * 12, baseline=[0] * 12)`` (a test checks), about 50 times faster."""
    path = os.fspath(path)
    name = fileio.basename(path)
    digital = np.round(np.asarray(signal, np.float64) * gain).astype(np.int64)
    if np.abs(digital).max(initial=0) > 32767:
        raise ValueError(f"{name}: signal exceeds the format-16 range of +-{32767 / gain:g} mV")
    fileio.write_bytes(path + ".dat", digital.T.astype("<i2").tobytes())
    header = [f"{name} {len(digital)} {fs} {digital.shape[1]}"] + [
        f"{name}.dat 16 {float(gain)}(0)/mV 16 0 {d[0]} {d.sum() % 65536} 0 {lead}"
        for d, lead in zip(digital, leads)]
    fileio.write_text(path + ".hea", "\n".join(header) + "\n")


def _write_chunk(task: tuple) -> list[dict]:
    """Generates and writes records start.. (WFDB at 500 and 100 Hz); returns their CSV rows."""
    out, seed, start, table, classes, afib_prob = task
    rows = []
    for i, (p, visit) in enumerate(table, start):
        signal, meta = _record(seed, i, p, visit, classes, FS_HR, DURATION_S, afib_prob)
        lowres = resample_poly(signal.astype(np.float64), 1, FS_HR // FS_LR, axis=1, padtype="line")
        for resolution, fs, sig in (("hr", FS_HR, signal), ("lr", FS_LR, lowres)):
            path = fileio.join(out, _record_path(meta["ecg_id"], resolution))
            fileio.makedirs(fileio.dirname(path))
            write_wfdb(path, sig, fs)
        rows.append({
            **{c: meta.get(c, math.nan) for c in _DATABASE_COLUMNS},
            "patient_id": float(meta["patient_id"]), "age": float(meta["age"]),
            "scp_codes": str(meta["scp_codes"]), "second_opinion": False,
            "initial_autogenerated_report": False,
            "infarction_stadium1": "Stadium II" if meta["diagnostic"] == "IMI" else math.nan,
            "filename_lr": _record_path(meta["ecg_id"], "lr"), "filename_hr": _record_path(meta["ecg_id"], "hr"),
        })
    return rows


def write_ptbxl(output_dir, num_records: int, seed: int = 0, workers: int = 1, progress: bool = True,
                class_probs: dict | None = None, afib_prob: float = AFIB_PROB, overwrite: bool = False) -> str:
    """Writes ``num_records`` synthetic records in PTB-XL's native layout (PhysioNet v1.0.3):
    ``ptbxl_database.csv``, ``scp_statements.csv``, ``records500/`` and ``records100/``.

    Returns the directory. A directory that already holds this very generation (its
    ``synthetic.json``, written last, matches) is left as it is; one where this generation was
    interrupted (``synthetic.partial.json`` matches) is written again from the start (the output is
    deterministic). Another generation is replaced only with ``overwrite``; any other non-empty
    directory is FileExistsError.
    """
    out = os.fspath(output_dir)
    classes = _class_table(class_probs)
    marker = {"generator": "data_prep.synthetic", "version": _VERSION, "num_records": num_records,
              "seed": seed, "class_probs": dict(zip(*classes)), "afib_prob": afib_prob}
    if fileio.isdir(out) and fileio.listdir(out):
        done, started = (json.loads(fileio.read_text(fileio.join(out, name)))
                         if fileio.isfile(fileio.join(out, name)) else None for name in (MARKER, PARTIAL))
        if done == marker:
            return out
        if started != marker:
            if (done is None and started is None) or not overwrite:
                raise FileExistsError(f"{out} is not empty and does not hold synthetic PTB-XL with {num_records} "
                                      f"records and seed {seed}; choose an empty directory"
                                      + ("" if done is None and started is None else
                                         " or pass --overwrite to replace the generation it holds"))
            fileio.rmtree(out)
    fileio.makedirs(out)
    fileio.write_text(fileio.join(out, PARTIAL), json.dumps(marker, indent=1) + "\n")

    table = _patient_table(seed, num_records)
    size = max(1, min(100, math.ceil(num_records / (8 * max(workers, 1)))))
    tasks = [(out, seed, s, table[s:s + size], classes, afib_prob) for s in range(0, num_records, size)]
    rows = []
    with tqdm(total=num_records, unit="rec", desc="synthetic PTB-XL", disable=not progress) as bar:
        if workers > 1:
            with worker_pool(workers) as pool:
                for chunk in pool.imap_unordered(_write_chunk, tasks):
                    rows += chunk
                    bar.update(len(chunk))
        else:
            for task in tasks:
                rows += _write_chunk(task)
                bar.update(len(task[3]))

    database = pd.DataFrame(rows, columns=_DATABASE_COLUMNS).sort_values("ecg_id").set_index("ecg_id")
    fileio.write_text(fileio.join(out, "ptbxl_database.csv"), database.to_csv())
    statements = pd.DataFrame.from_dict(_STATEMENTS, orient="index", columns=_STATEMENT_COLUMNS)
    statements[["diagnostic", "form", "rhythm"]] = statements[["diagnostic", "form", "rhythm"]].astype(float)
    fileio.write_text(fileio.join(out, "scp_statements.csv"), statements.to_csv())
    fileio.write_text(fileio.join(out, MARKER), json.dumps(marker, indent=1) + "\n")
    fileio.remove(fileio.join(out, PARTIAL))
    return out


MIMIC_LEADS = ("I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6")  # MIMIC-IV-ECG's order
_MIMIC_ORDER = [WFDB_LEADS.index(name.upper()) for name in MIMIC_LEADS]
_MIMIC_REPORTS = {"SR": "Sinus rhythm", "AFIB": "Atrial fibrillation", "IMI": "Inferior infarct - age undetermined",
                  "ISCAL": "Lateral ST-T changes may be due to myocardial ischemia",
                  "CRBBB": "Right bundle branch block", "LVH": "Left ventricular hypertrophy"}


def write_mimic_iv_ecg(directory, records: int, seed: int = 0, progress: bool = False) -> str:
    """Writes ``records`` synthetic records in MIMIC-IV-ECG's layout (PhysioNet v1.0):
    ``record_list.csv``, ``machine_measurements.csv`` (the machine's statements as report_0..) and
    ``files/pNNNN/pN../sN../N..{.hea,.dat}`` (format 16, 200 steps per mV, aVF before aVL).
    subject_id = 10000000 + patient_id, study_id = 40000000 + ecg_id. Returns the directory."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    classes = _class_table(None)
    listing, measurements = [], []
    for i, (p, visit) in enumerate(tqdm(_patient_table(seed, records), unit="rec", disable=not progress,
                                        desc="synthetic MIMIC-IV-ECG")):
        signal, meta = _record(seed, i, p, visit, classes, FS_HR, DURATION_S, AFIB_PROB)
        subject, study = 10000000 + meta["patient_id"], 40000000 + meta["ecg_id"]
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_wfdb(out / rel, signal[_MIMIC_ORDER], FS_HR, gain=200.0, leads=MIMIC_LEADS)
        date = meta["recording_date"]
        ecg_time = f"{int(date[:4]) + 200}{date[4:]}"  # MIMIC's dates are shifted into the future
        listing.append({"subject_id": subject, "study_id": study, "file_name": study, "ecg_time": ecg_time,
                        "path": rel})
        normal = meta["diagnostic"] == "NORM"
        reports = [_MIMIC_REPORTS[meta["rhythm"]]] + ([] if normal else [_MIMIC_REPORTS[meta["diagnostic"]]])
        reports.append("Normal ECG" if normal else "Abnormal ECG")
        measurements.append({"subject_id": subject, "study_id": study, "cart_id": 6848 + p % 7, "ecg_time": ecg_time,
                             **{f"report_{k}": reports[k] if k < len(reports) else math.nan for k in range(18)},
                             "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter",
                             "rr_interval": round(60000 / meta["heart_rate"]),
                             **dict.fromkeys(("p_onset", "p_end", "qrs_onset", "qrs_end", "t_end", "p_axis",
                                              "qrs_axis", "t_axis"), math.nan)})
    pd.DataFrame(listing).to_csv(out / "record_list.csv", index=False)
    pd.DataFrame(measurements).to_csv(out / "machine_measurements.csv", index=False)
    return str(out)


_CARDIOSOFT_DATE = datetime.datetime(2015, 6, 15, 10, 30, 5)  # the ObservationDateTime written
_MEDIAN_SAMPLES = 600


def _cardiosoft_waveforms(digital: np.ndarray, fs: int, resolution_uv: float, lead_names, indent: str) -> list[str]:
    """The children of <StripData> or <MedianSamples>: 16 integers a line, each line ending in a comma."""
    lines = [f"{indent}<NumberOfLeads>{len(digital)}</NumberOfLeads>",
             f'{indent}<SampleRate units="Hz">{fs}</SampleRate>',
             f"{indent}<ChannelSampleCountTotal>{digital.shape[1]}</ChannelSampleCountTotal>",
             f'{indent}<Resolution units="uVperLsb">{resolution_uv:g}</Resolution>']
    for lead, row in zip(lead_names, digital.tolist()):
        body = "\n".join(f"{indent}\t" + ",".join(map(str, row[k:k + 16])) + "," for k in range(0, len(row), 16))
        lines.append(f"{indent}<WaveformData lead={quoteattr(lead)}>\n{body}\n{indent}</WaveformData>")
    return lines


def write_cardiosoft_xml(path: str, signal_mv: np.ndarray, fs: int, lead_names=LEAD_NAMES,
                         patient_id: str = "", resolution_uv: float = 5.0, medians: bool = True) -> None:
    """Writes a (leads, samples) signal in mV as a GE CardioSoft XML resting ECG (UK Biobank's layout):
    ``<StripData>`` holds round(mV * 1000 / resolution_uv) per sample. With ``medians``, 600-sample
    median beats (the median over consecutive 600-sample segments) come first, in
    ``<RestingECGMeasurements><MedianSamples>``, so a reader taking the first ``<WaveformData>`` is wrong."""
    signal = np.asarray(signal_mv, np.float64)
    if signal.ndim != 2 or len(signal) != len(lead_names):
        raise ValueError(f"signal_mv must be (leads, samples) with {len(lead_names)} leads, got {signal.shape}")
    if not np.isfinite(signal).all():
        raise ValueError("signal_mv holds NaN or infinite values")
    digital = np.round(signal * 1000.0 / resolution_uv).astype(np.int64)
    d = _CARDIOSOFT_DATE
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', "<CardiologyXML>",
             "\t<ObservationType>RestECG</ObservationType>", "\t<ObservationDateTime>",
             *(f"\t\t<{tag}>{value}</{tag}>" for tag, value in
               (("Hour", d.hour), ("Minute", d.minute), ("Second", d.second), ("Day", d.day),
                ("Month", d.month), ("Year", d.year))),
             "\t</ObservationDateTime>",
             "\t<ClinicalInfo>", "\t\t<DeviceInfo>", "\t\t\t<Desc>CASE</Desc>", "\t\t</DeviceInfo>",
             "\t</ClinicalInfo>",
             "\t<PatientInfo>", f"\t\t<PID>{escape(patient_id)}</PID>", "\t</PatientInfo>"]
    if medians:
        segments = max(1, signal.shape[1] // _MEDIAN_SAMPLES)
        padded = np.pad(signal, ((0, 0), (0, max(0, segments * _MEDIAN_SAMPLES - signal.shape[1]))))
        beats = np.median(padded[:, :segments * _MEDIAN_SAMPLES].reshape(len(signal), segments, -1), axis=1)
        lines += ["\t<RestingECGMeasurements>", "\t\t<MedianSamples>",
                  *_cardiosoft_waveforms(np.round(beats * 1000.0 / resolution_uv).astype(np.int64), fs,
                                         resolution_uv, lead_names, "\t\t\t"),
                  "\t\t</MedianSamples>", "\t</RestingECGMeasurements>"]
    lines += ["\t<StripData>", *_cardiosoft_waveforms(digital, fs, resolution_uv, lead_names, "\t\t"),
              "\t</StripData>", "</CardiologyXML>"]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m data_prep.synthetic", description=__doc__.split("\n")[0])
    p.add_argument("output_dir")
    p.add_argument("--records", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    print(write_ptbxl(args.output_dir, args.records, seed=args.seed, workers=args.workers, progress=not args.quiet))


if __name__ == "__main__":
    main()
