"""The synthetic ECG generator: lead algebra, class signatures, determinism, PTB-XL layout."""

import ast
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb

from data_prep import synthetic as S
from stmem_jax.core.leads import LEAD_NAMES

FS = 500
L = {name: k for k, name in enumerate(LEAD_NAMES)}


def median_beat(signal, r_peaks, lo_ms=-300, hi_ms=500):
    """(12, samples) median beat from `lo_ms` to `hi_ms` around the R waves, zeroed at the PR segment."""
    lo, hi = lo_ms * FS // 1000, hi_ms * FS // 1000
    r = r_peaks[(r_peaks + lo >= 0) & (r_peaks + hi <= signal.shape[1])]
    beat = np.median(np.stack([signal[:, a + lo:a + hi] for a in r]), 0)
    return beat - beat[:, at(-60):at(-50)].mean(1, keepdims=True)


def at(ms, lo_ms=-300):
    """Index in a median beat of the time `ms` after the R wave."""
    return (ms - lo_ms) * FS // 1000


def qrs_ms(beat):
    """QRS duration: span, between R-80 and R+140 ms, where the spatial velocity of the 20-ms
    smoothed beat exceeds 10% of its peak."""
    smooth = np.stack([np.convolve(lead, np.ones(10) / 10, "same") for lead in beat])
    speed = np.abs(np.diff(smooth, axis=1)).sum(0)[at(-80):at(140)]
    above = np.flatnonzero(speed > 0.1 * speed.max())
    return (above[-1] - above[0]) * 1000 / FS


@pytest.fixture(scope="module")
def by_class():
    """12 records of each diagnostic class: {class: [(signal, meta), ...]}."""
    return {c: list(zip(*S.generate_records(12, seed=11, class_probs={c: 1.0}))) for c in S.CLASSES}


def beats(records, rhythm="SR"):
    return [median_beat(s, m["r_peaks"]) for s, m in records if m["rhythm"] == rhythm]


def test_einthoven_goldberger_exact():
    x, _ = S.generate_records(20, seed=0)
    I, II, III, aVR, aVL, aVF = (x[:, L[n]] for n in ("I", "II", "III", "aVR", "aVL", "aVF"))
    np.testing.assert_allclose(III, II - I, atol=1e-5, rtol=0)
    np.testing.assert_allclose(aVR, -(I + II) / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(aVL, I - II / 2, atol=1e-5, rtol=0)
    np.testing.assert_allclose(aVF, II - I / 2, atol=1e-5, rtol=0)
    assert x.dtype == np.float32 and x.shape == (20, 12, 5000)


def test_amplitudes_in_mv(by_class):
    norm = beats(by_class["NORM"])
    qrs = np.array([b[:, at(-60):at(60)].max(1) - b[:, at(-60):at(60)].min(1) for b in norm])
    assert 0.4 < np.median(qrs[:, L["II"]]) < 2.5
    assert 1.0 < np.median(qrs.max(1)) < 4.0  # the largest QRS, a precordial lead
    p = np.array([b[L["II"], at(-250):at(-70)].max() for b in norm])
    assert 0.04 < np.median(p) < 0.3
    assert 50 < np.median([qrs_ms(b) for b in norm]) < 110
    signals = np.stack([s for s, _ in by_class["NORM"]])
    assert np.abs(signals).max() < 10


def test_imi_inferior_st_elevation_and_q_waves(by_class):
    def st(records, leads):
        return np.mean([b[[L[n] for n in leads], at(110)].mean() for b in beats(records)])

    assert st(by_class["IMI"], ("II", "III", "aVF")) > st(by_class["NORM"], ("II", "III", "aVF")) + 0.1
    assert st(by_class["IMI"], ("I", "aVL")) < st(by_class["NORM"], ("I", "aVL")) - 0.03
    q = [b[L["III"], at(-50):at(0)].min() for b in beats(by_class["IMI"])]
    q_norm = [b[L["III"], at(-50):at(0)].min() for b in beats(by_class["NORM"])]
    assert np.mean(q) < np.mean(q_norm) - 0.15


def test_iscal_lateral_st_depression_and_t_inversion(by_class):
    for cls, sign in (("ISCAL", -1), ("NORM", 1)):
        lateral = [b[[L["I"], L["aVL"], L["V5"], L["V6"]]] for b in beats(by_class[cls])]
        t_wave = np.mean([x[:, at(150):at(300)].mean() for x in lateral])
        st = np.mean([x[2:, at(110)].mean() for x in lateral])
        assert sign * t_wave > 0.05, cls
        if cls == "ISCAL":
            assert st < -0.05


def test_crbbb_wide_qrs_and_rsr_prime_in_v1(by_class):
    widths = [qrs_ms(b) for b in beats(by_class["CRBBB"])]
    assert np.min(widths) >= 120 and np.mean(widths) > np.mean([qrs_ms(b) for b in beats(by_class["NORM"])]) + 30
    for b in beats(by_class["CRBBB"]):
        v1 = b[L["V1"]]
        s_wave = v1[at(-10):at(30)].argmin() + at(-10)
        assert v1[s_wave] < 0 and v1[s_wave:at(140)].max() > 0.3  # S then a tall R'
        assert b[L["I"], at(40):at(100)].min() < -0.1 and b[L["V6"], at(40):at(100)].min() < -0.1  # broad S


def test_lvh_sokolow_lyon(by_class):
    def sokolow(b):
        qrs = b[:, at(-60):at(60)]
        return max(qrs[L["V5"]].max(), qrs[L["V6"]].max()) - qrs[L["V1"]].min()

    lvh, norm = (np.array([sokolow(b) for b in beats(by_class[c])]) for c in ("LVH", "NORM"))
    assert np.mean(lvh) > 3.5 and np.median(lvh) > 3.5
    assert np.mean(lvh) > np.mean(norm) + 1.0
    avl = [np.mean([b[L["aVL"], at(-60):at(60)].max() for b in beats(by_class[c])]) for c in ("LVH", "NORM")]
    assert avl[0] > avl[1] + 0.2


def test_afib_irregular_rr_no_p_waves():
    x, meta = S.generate_records(30, seed=5, afib_prob=0.5)
    cv, p_wave = {"SR": [], "AFIB": []}, {"SR": [], "AFIB": []}
    for s, m in zip(x, meta):
        rr = np.diff(m["r_peaks"])
        cv[m["rhythm"]].append(rr.std() / rr.mean())
        long_cycles = m["r_peaks"][1:][rr > 0.7 * FS]  # the previous T wave is over by R - 250 ms
        if len(long_cycles) >= 3:
            p_wave[m["rhythm"]].append(median_beat(s, long_cycles)[L["II"], at(-220):at(-90)].mean())
    assert len(cv["SR"]) >= 8 and len(cv["AFIB"]) >= 8 and len(p_wave["AFIB"]) >= 4
    assert min(cv["AFIB"]) > 2 * max(cv["SR"]) and np.mean(cv["AFIB"]) > 0.1
    assert np.median(p_wave["SR"]) > 0.03 and np.median(p_wave["SR"]) > 3 * abs(np.median(p_wave["AFIB"]))


def test_r_peaks_mark_the_qrs():
    x, meta = S.generate_records(10, seed=6)
    for s, m in zip(x, meta):
        energy = np.abs(np.diff(s, axis=1)).sum(0)
        for r in m["r_peaks"][(m["r_peaks"] > 50) & (m["r_peaks"] < 4900)]:
            assert abs(np.argmax(energy[r - 50:r + 50]) - 50) <= 20  # within 40 ms


def test_metadata_patients_folds_and_balance():
    x, meta = S.generate_records(300, seed=3, fs=100, duration_s=2.0)
    assert x.shape == (300, 12, 200)
    assert [m["ecg_id"] for m in meta] == list(range(1, 301))
    db = pd.DataFrame(meta)
    assert db.groupby("patient_id").strat_fold.nunique().max() == 1
    assert db.groupby("patient_id").diagnostic.nunique().max() == 1
    assert db.groupby("patient_id").size().isin([1, 2, 3]).all() and db.patient_id.nunique() < 250
    folds = db.groupby("patient_id").strat_fold.first().value_counts(normalize=True)
    assert set(folds.index) == set(range(1, 11)) and folds.max() < 0.2
    assert abs((db.diagnostic == "NORM").mean() - 0.4) < 0.1
    assert all(abs((db.diagnostic == c).mean() - 0.15) < 0.07 for c in S.CLASSES[1:])
    assert abs((db.rhythm == "AFIB").mean() - 0.2) < 0.07
    for m in meta:
        assert m["scp_codes"] == {m["diagnostic"]: m["scp_codes"][m["diagnostic"]], m["rhythm"]: 0.0}
        assert m["scp_codes"][m["diagnostic"]] in (100.0, 80.0, 50.0)
        assert m["sex"] in (0, 1) and 18 <= m["age"] <= 100 and 1 <= m["strat_fold"] <= 10
        assert np.all(np.diff(m["r_peaks"]) > 0) and 0 <= m["r_peaks"].min() and m["r_peaks"].max() < 200
    with pytest.raises(ValueError, match="unknown classes"):
        S.generate_records(1, class_probs={"STEMI": 1.0})


def test_deterministic_and_independent_of_count():
    a, meta_a = S.generate_records(7, seed=3)
    b, meta_b = S.generate_records(4, seed=3)
    np.testing.assert_array_equal(a[:4], b)
    assert [m["scp_codes"] for m in meta_a[:4]] == [m["scp_codes"] for m in meta_b]
    np.testing.assert_array_equal(a, S.generate_records(7, seed=3)[0])
    assert not np.allclose(a[:4], S.generate_records(4, seed=4)[0])


def test_record_paths_follow_ptbxl_folders():
    assert S._record_path(1, "hr") == "records500/00000/00001_hr"
    assert S._record_path(999, "lr") == "records100/00000/00999_lr"
    assert S._record_path(1000, "hr") == "records500/01000/01000_hr"
    assert S._record_path(21837, "hr") == "records500/21000/21837_hr"


def test_write_wfdb_matches_wfdb_wrsamp(tmp_path):
    x, _ = S.generate_records(1, seed=9, fs=100, duration_s=3.0)
    signal = x[0].astype(np.float64) + 0.0005  # exercise rounding of half-steps
    S.write_wfdb(tmp_path / "ours", signal, 100)
    (tmp_path / "ref").mkdir()
    wfdb.wrsamp("ours", fs=100, units=["mV"] * 12, sig_name=list(S.WFDB_LEADS), p_signal=signal.T,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path / "ref"))
    for ext in (".hea", ".dat"):
        assert (tmp_path / ("ours" + ext)).read_bytes() == (tmp_path / "ref" / ("ours" + ext)).read_bytes()
    with pytest.raises(ValueError, match="range"):
        S.write_wfdb(tmp_path / "big", signal + 40.0, 100)


def test_write_ptbxl_layout(tmp_path):
    n = 12
    root = S.write_ptbxl(tmp_path / "ptbxl", n, seed=2, progress=False)
    signals, meta = S.generate_records(n, seed=2)
    db = pd.read_csv(os.path.join(root, "ptbxl_database.csv"), index_col="ecg_id")
    statements = pd.read_csv(os.path.join(root, "scp_statements.csv"), index_col=0)
    assert {"patient_id", "age", "sex", "height", "weight", "nurse", "site", "device", "recording_date",
            "report", "scp_codes", "heart_axis", "validated_by_human", "strat_fold", "filename_lr",
            "filename_hr"} <= set(db.columns)
    assert {"description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass",
            "Statement Category"} <= set(statements.columns)
    assert list(db.index) == list(range(1, n + 1))
    assert statements.loc["IMI", "diagnostic_class"] == "MI"
    assert statements.loc["ISCAL", "diagnostic_subclass"] == "ISCA"
    assert statements.loc["AFIB", "rhythm"] == 1.0 and np.isnan(statements.loc["AFIB", "diagnostic"])
    assert db.groupby("patient_id").strat_fold.nunique().max() == 1
    for ecg_id, row in db.iterrows():
        codes = ast.literal_eval(row.scp_codes)
        assert codes == meta[ecg_id - 1]["scp_codes"] and set(codes) <= set(statements.index)
        for column in ("filename_hr", "filename_lr"):
            assert os.path.isfile(os.path.join(root, row[column] + ".hea"))
            assert os.path.isfile(os.path.join(root, row[column] + ".dat"))
    for k in (0, n - 1):
        hr, fields = wfdb.rdsamp(os.path.join(root, db.filename_hr.iloc[k]))
        assert fields["fs"] == 500 and hr.shape == (5000, 12) and fields["units"] == ["mV"] * 12
        assert fields["sig_name"] == ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
        assert wfdb.rdheader(os.path.join(root, db.filename_hr.iloc[k])).fmt == ["16"] * 12
        np.testing.assert_allclose(hr.T, signals[k], atol=5.01e-4, rtol=0)
        lr, fields = wfdb.rdsamp(os.path.join(root, db.filename_lr.iloc[k]))
        assert fields["fs"] == 100 and lr.shape == (1000, 12)
        corr = [np.corrcoef(lr[:, j], hr[::5, j])[0, 1] for j in range(12)]
        assert np.mean(corr) > 0.9
        assert np.all(np.abs(np.diff(lr, axis=0)).mean(0) < np.abs(np.diff(hr[::5], axis=0)).mean(0))  # low-passed

    assert S.write_ptbxl(root, n, seed=2, progress=False) == root  # same generation: accepted as is
    with pytest.raises(FileExistsError, match="ptbxl"):
        S.write_ptbxl(root, n, seed=3, progress=False)


def test_write_ptbxl_parallel_matches_serial(tmp_path):
    serial = S.write_ptbxl(tmp_path / "serial", 5, seed=8, progress=False)
    parallel = S.write_ptbxl(tmp_path / "parallel", 5, seed=8, workers=2, progress=False)
    for name in ("ptbxl_database.csv", "records500/00000/00004_hr.dat", "records100/00000/00005_lr.dat"):
        with open(os.path.join(serial, name), "rb") as a, open(os.path.join(parallel, name), "rb") as b:
            assert a.read() == b.read(), name


def test_an_interrupted_generation_is_completed_by_a_rerun_and_another_is_replaced_only_with_overwrite(
        tmp_path, monkeypatch):
    reference = S.write_ptbxl(tmp_path / "reference", 6, seed=4, progress=False)
    calls = []
    real = S._write_chunk

    def dying(task):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while writing the third chunk
        calls.append(task)
        return real(task)

    monkeypatch.setattr(S, "_write_chunk", dying)
    target = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        S.write_ptbxl(target, 6, seed=4, progress=False)
    assert (target / S.PARTIAL).is_file() and not (target / S.MARKER).is_file()
    monkeypatch.setattr(S, "_write_chunk", real)
    assert S.write_ptbxl(target, 6, seed=4, progress=False) == str(target)
    assert not (target / S.PARTIAL).exists()
    for name in ("ptbxl_database.csv", "records500/00000/00003_hr.dat", "records500/00000/00006_hr.hea"):
        assert (target / name).read_bytes() == (Path(reference) / name).read_bytes(), name

    with pytest.raises(FileExistsError, match="--overwrite"):
        S.write_ptbxl(target, 4, seed=5, progress=False)
    S.write_ptbxl(target, 4, seed=5, progress=False, overwrite=True)
    assert len(pd.read_csv(target / "ptbxl_database.csv")) == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="choose an empty directory$"):
        S.write_ptbxl(tmp_path / "mine", 4, seed=5, progress=False, overwrite=True)
