"""Small datasets written in each native layout, with the signals they hold."""

import os

import h5py
import numpy as np
import pandas as pd
import wfdb
from scipy import io as sio

PTBXL_LEADS = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def ecg_like(rng, leads, samples, fs):
    """Smooth multi-lead test signal in mV: a few sines per lead plus a little noise."""
    t = np.arange(samples) / fs
    out = np.zeros((leads, samples))
    for lead in range(leads):
        for _ in range(4):
            out[lead] += rng.uniform(0.1, 0.6) * np.sin(2 * np.pi * rng.uniform(0.8, 25) * t + rng.uniform(0, 6))
    return out + 0.01 * rng.standard_normal(out.shape)


def write_wfdb(directory, name, signal, fs, lead_names, comments=(), mat=False, gain=1000.0):
    """Writes (leads, samples) mV ``signal`` as WFDB (``.dat``, or Challenge-style MATLAB v4 ``.mat``)
    at ``gain`` steps per mV (1 uV resolution by default); returns the values as stored (NaN kept)."""
    os.makedirs(directory, exist_ok=True)
    digital = np.where(np.isnan(signal), -32768, np.round(np.nan_to_num(signal) * gain)).astype(np.int16)
    n = len(lead_names)
    common = dict(record_name=name, n_sig=n, fs=fs, sig_len=signal.shape[1], fmt=["16"] * n,
                  adc_gain=[float(gain)] * n, baseline=[0] * n, units=["mV"] * n, sig_name=list(lead_names),
                  adc_res=[16] * n, adc_zero=[0] * n, init_value=[int(v) for v in digital[:, 0]],
                  checksum=[0] * n, block_size=[0] * n, comments=list(comments))
    if mat:
        sio.savemat(os.path.join(directory, name + ".mat"), {"val": digital}, format="4")
        record = wfdb.Record(file_name=[name + ".mat"] * n, byte_offset=[24] * n, **common)
    else:
        record = wfdb.Record(file_name=[name + ".dat"] * n, d_signal=digital.T, **common)
        record.wr_dats(expanded=False, write_dir=directory)
    record.wrheader(write_dir=directory)
    return np.where(digital == -32768, np.nan, digital / gain)


SCP_STATEMENTS = pd.DataFrame(
    {"description": ["normal ECG", "inferior MI", "complete RBBB", "LVH", "sinus rhythm", "atrial fibrillation",
                     "ischemic in anterolateral leads", "abnormal QRS"],
     "diagnostic": [1, 1, 1, 1, np.nan, np.nan, 1, np.nan],
     "form": [np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan, 1],
     "rhythm": [np.nan, np.nan, np.nan, np.nan, 1, 1, np.nan, np.nan],
     "diagnostic_class": ["NORM", "MI", "CD", "HYP", np.nan, np.nan, "STTC", np.nan],
     "diagnostic_subclass": ["NORM", "IMI", "CRBBB", "LVH", np.nan, np.nan, "ISCA", np.nan]},
    index=pd.Index(["NORM", "IMI", "CRBBB", "LVH", "SR", "AFIB", "ISCAL", "ABQRS"]))


def write_ptbxl(root, rows, seed=0):
    """PTB-XL layout. ``rows``: dicts with ecg_id, patient_id, scp_codes (dict), strat_fold and
    optionally signal ((12, 5000) mV at 500 Hz). Returns {ecg_id: stored signal}."""
    rng = np.random.default_rng(seed)
    stored, table = {}, []
    for row in rows:
        ecg_id = row["ecg_id"]
        folder = f"records500/{ecg_id // 1000 * 1000:05d}"
        signal = row.get("signal")
        signal = ecg_like(rng, 12, 5000, 500) if signal is None else signal
        stored[ecg_id] = write_wfdb(os.path.join(root, folder), f"{ecg_id:05d}_hr", signal, 500, PTBXL_LEADS)
        table.append({"ecg_id": ecg_id, "patient_id": float(row["patient_id"]), "age": row.get("age", 60.0),
                      "sex": row.get("sex", 0), "scp_codes": repr(row["scp_codes"]), "strat_fold": row["strat_fold"],
                      "filename_lr": f"records100/{ecg_id // 1000 * 1000:05d}/{ecg_id:05d}_lr",
                      "filename_hr": f"{folder}/{ecg_id:05d}_hr"})
    pd.DataFrame(table).to_csv(os.path.join(root, "ptbxl_database.csv"), index=False)
    SCP_STATEMENTS.to_csv(os.path.join(root, "scp_statements.csv"))
    return stored


def write_cpsc_original(root, records, seed=0):
    """Original CPSC2018 release. ``records``: (name, [class numbers], seconds). Returns signals."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "TrainingSet1")
    os.makedirs(folder, exist_ok=True)
    signals, rows = {}, []
    for name, classes, seconds in records:
        data = ecg_like(rng, 12, int(seconds * 500), 500)
        sio.savemat(os.path.join(folder, name + ".mat"), {"ECG": {"sex": "Female", "age": 63, "data": data}})
        signals[name] = data
        rows.append([name] + [str(c) for c in classes] + [""] * (3 - len(classes)))
    pd.DataFrame(rows, columns=["Recording", "First_label", "Second_label", "Third_label"]).to_csv(
        os.path.join(folder, "REFERENCE.csv"), index=False)
    return signals


def write_code15(root, tracings, exam_ids, patient_ids):
    """CODE-15 layout: one HDF5 part with (n, 4096, 12) tracings and exams.csv."""
    os.makedirs(root, exist_ok=True)
    with h5py.File(os.path.join(root, "exams_part0.hdf5"), "w") as f:
        f.create_dataset("tracings", data=np.asarray(tracings, np.float32))
        f.create_dataset("exam_id", data=np.asarray(exam_ids, np.int64))
    rows = [{"exam_id": e, "age": 50, "is_male": i % 2 == 0, "nn_predicted_age": 51, "1dAVb": False,
             "RBBB": i == 0, "LBBB": False, "SB": False, "ST": False, "AF": i == 1, "patient_id": p,
             "death": False, "timey": 1.0, "normal_ecg": i > 1, "trace_file": "exams_part0.hdf5"}
            for i, (e, p) in enumerate(zip(exam_ids, patient_ids)) if e != 0]
    pd.DataFrame(rows).to_csv(os.path.join(root, "exams.csv"), index=False)


MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]  # header order


def write_mimic_iv_ecg(root, rows, seed=0, measurements=True):
    """MIMIC-IV-ECG layout, WFDB files written by the wfdb package at 200 adu/mV. ``rows``: dicts with
    subject_id, study_id (anything for a malformed row) and optionally reports (statements), signal
    ((12, 5000) mV in MIMIC_LEADS order), truncate (bytes of the .dat kept) and missing ("hea",
    "dat" or "both": not written). Returns {study_id: stored signal in MIMIC_LEADS order}."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    stored, listing, machine = {}, [], []
    for row in rows:
        subject, study = row["subject_id"], row["study_id"]
        rel = f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"
        listing.append({"subject_id": subject, "study_id": study, "file_name": study,
                        "ecg_time": "2180-07-23 08:44:00", "path": rel})
        reports = list(row.get("reports", []))
        machine.append({"subject_id": subject, "study_id": study, "cart_id": 6848, "ecg_time": "2180-07-23 08:44:00",
                        **{f"report_{k}": reports[k] if k < len(reports) else "" for k in range(18)},
                        "bandwidth": "0.005-150 Hz", "filtering": "60 Hz notch Baseline filter", "rr_interval": 857,
                        "p_onset": 40, "p_end": 128, "qrs_onset": 170, "qrs_end": 258, "t_end": 518,
                        "p_axis": 81, "qrs_axis": 77, "t_axis": 79})
        missing = row.get("missing", "")
        if missing == "both":
            continue
        signal = row.get("signal")
        digital = np.round((ecg_like(rng, 12, 5000, 500) if signal is None else signal) * 200).astype(np.int16)
        folder = os.path.join(root, os.path.dirname(rel))
        os.makedirs(folder, exist_ok=True)
        wfdb.wrsamp(str(study), fs=500, units=["mV"] * 12, sig_name=MIMIC_LEADS, d_signal=digital.T, fmt=["16"] * 12,
                    adc_gain=[200.0] * 12, baseline=[0] * 12, write_dir=folder)
        stored[study] = digital / 200.0
        if "truncate" in row:
            with open(os.path.join(root, rel + ".dat"), "r+b") as f:
                f.truncate(row["truncate"])
        if missing:
            os.remove(os.path.join(root, f"{rel}.{missing}"))
    pd.DataFrame(listing).to_csv(os.path.join(root, "record_list.csv"), index=False)
    if measurements:
        pd.DataFrame(machine).to_csv(os.path.join(root, "machine_measurements.csv"), index=False)
    return stored


def write_hl7_aecg(path, signal, fs, lead_names, patient_id="", scale_uv=1.0, scale_unit="uV"):
    """Writes (leads, samples) mV ``signal`` as an HL7 aECG rhythm series (digits in steps of
    ``scale_uv`` ``scale_unit``; an empty unit gives uncalibrated counts); returns the values as stored in mV."""
    digits = np.round(signal * 1000 / scale_uv).astype(np.int64)
    unit = f' unit="{scale_unit}"' if scale_unit else ""
    sequences = [f'<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
                 f'<value xsi:type="GLIST_TS"><head value="20240102030405.000"/>'
                 f'<increment value="{1 / fs:.9f}" unit="s"/></value></sequence></component>']
    for name, row in zip(lead_names, digits):
        sequences.append(f'<component><sequence><code code="MDC_ECG_LEAD_{name}" codeSystem="2.16.840.1.113883.6.24"/>'
                         f'<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="{scale_uv}"{unit}/>'
                         f'<digits>{" ".join(map(str, row))}</digits></value></sequence></component>')
    text = f'''<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/><code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
<effectiveTime><low value="20240102030405"/><high value="20240102030415"/></effectiveTime>
<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
<id extension="{patient_id}"/></trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
<effectiveTime><low value="20240102030405"/><high value="20240102030415"/></effectiveTime>
<component><sequenceSet>{"".join(sequences)}</sequenceSet></component></series></component>
</AnnotatedECG>
'''
    with open(path, "w") as f:
        f.write(text)
    return digits * scale_uv / 1000


def write_edf(path, signal, fs, lead_names, patient_id="X"):
    """Writes (leads, samples) mV ``signal`` as EDF (16-bit, each channel's physical range its
    min..max); returns the resolution in mV (the largest step of any channel)."""
    import edfio

    channels, steps = [], []
    for name, row in zip(lead_names, signal):
        low, high = float(row.min()), float(row.max())
        channels.append(edfio.EdfSignal(row, fs, label=name, physical_dimension="mV", physical_range=(low, high)))
        steps.append((high - low) / 65535)
    edf = edfio.Edf(channels, patient=edfio.Patient(code=patient_id))
    edf.write(path)
    return max(steps)
