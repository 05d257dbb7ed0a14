import json
import os

import numpy as np
import pytest

import native_fixtures as nf
from data_prep.cli import main
from data_prep.sources import SOURCES
from stmem_jax.core.recipe import AUTHORS
from test_prepare import expected_windows, read_split, tolerance

GOOD = {40689238: (10000032, ["Sinus rhythm", "Normal ECG"]),
        40689239: (10000032, ["Atrial fibrillation", " Abnormal ECG ", "", "Atrial fibrillation"]),
        45090959: (10000117, [])}


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic")
    flat = nf.ecg_like(np.random.default_rng(1), 12, 5000, 500)
    flat[nf.MIMIC_LEADS.index("aVF")] = 0.0
    rows = [{"subject_id": s, "study_id": study, "reports": r} for study, (s, r) in GOOD.items()] + [
        {"subject_id": 10000560, "study_id": 41000001, "signal": flat, "reports": ["Sinus rhythm"]},
        {"subject_id": 10000690, "study_id": 42000002, "truncate": 1000},
        {"subject_id": 10000764, "study_id": 43000003, "missing": "both"},
        {"subject_id": 10000764, "study_id": 43000004, "missing": "dat"},
        {"subject_id": "n/a", "study_id": 44000005, "missing": "both"},
    ]
    stored = nf.write_mimic_iv_ecg(root / "native", rows)
    out = root / "out"
    status = main(["mimic_iv_ecg", "--input", str(root / "native"), "--output", str(out), "--quiet", "--workers", "1",
                   "--flat-leads", "drop"])  # the flat record is skipped and reported (the authors' recipe keeps it)
    manifest = json.loads((out / "manifest.json").read_text())
    return root / "native", out, manifest, stored, status


def test_windows_in_standard_lead_order_with_subject_and_study_ids(mimic):
    _, out, manifest, stored, _ = mimic
    assert manifest["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    order = [nf.MIMIC_LEADS.index(name) for name in manifest["leads"]]
    assert order[4:6] == [5, 4]  # the file holds aVF before aVL
    examples = {ex["record_id"].decode(): ex for ex in read_split(out, "train")}
    assert sorted(examples) == sorted(str(study) for study in GOOD)
    assert list(manifest["splits"]) == ["train"]
    for record_id, ex in examples.items():
        (window,) = expected_windows(stored[int(record_id)][order], 500, AUTHORS)
        assert ex["mv"].shape == (12, 2500) and int(ex["window"]) == 0
        np.testing.assert_allclose(ex["mv"], window, atol=tolerance(window) * 0.51 + 1e-7)
        assert ex["patient_id"].decode() == str(GOOD[int(record_id)][0])


def test_machine_statements_are_codes_and_report_labels(mimic):
    _, out, manifest, _, _ = mimic
    assert manifest["tasks"] == {"report": {"classes": ["Abnormal ECG", "Atrial fibrillation", "Normal ECG",
                                                        "Sinus rhythm"], "multilabel": True}}
    examples = {ex["record_id"].decode(): ex for ex in read_split(out, "train")}
    got = {r: ([c.decode() for c in ex["codes"]], [c.decode() for c in ex["labels"]["report"]])
           for r, ex in examples.items()}
    assert got["40689238"] == (["Sinus rhythm", "Normal ECG"], ["Sinus rhythm", "Normal ECG"])
    assert got["40689239"][0] == ["Atrial fibrillation", "Abnormal ECG"]  # stripped, empty and repeated left out
    assert sorted(got["40689239"][1]) == ["Abnormal ECG", "Atrial fibrillation"]
    assert got["45090959"] == ([], [])
    np.testing.assert_array_equal(examples["40689238"]["code_weights"], [1.0, 1.0])
    assert manifest["splits"]["train"]["classes"]["report"] == {"Abnormal ECG": 1, "Atrial fibrillation": 1,
                                                                 "Normal ECG": 1, "Sinus rhythm": 1}


def test_skips_are_reported_with_their_reasons_and_exit_status_3(mimic):
    root, _, manifest, _, status = mimic
    assert status == 3
    skips = {s["record_id"]: s for s in manifest["skipped"]}
    assert set(skips) == {"41000001", "42000002", "43000003", "43000004", "record_list.csv[7]"}
    assert skips["41000001"]["reason"] == "lead aVF is flat"
    assert skips["42000002"]["reason"].startswith("unreadable signal: 42000002.dat is truncated (41 of 5000")
    assert skips["43000003"]["reason"] == "43000003.hea missing"
    assert skips["43000003"]["path"] == str(root / "files/p1000/p10000764/s43000003/43000003.hea")
    assert skips["43000004"]["reason"] == "43000004.dat missing"
    assert skips["record_list.csv[7]"]["path"] == str(root / "record_list.csv")
    assert "non-numeric subject_id 'n/a'" in skips["record_list.csv[7]"]["reason"]
    assert manifest["skipped_count"] == 5
    assert sorted(manifest["inputs"]["index_files"]) == ["machine_measurements.csv", "record_list.csv"]


def test_without_machine_measurements_no_labels_and_without_record_list_an_error(tmp_path):
    row = {"subject_id": 10000032, "study_id": 40689238, "reports": ["Normal ECG"]}
    nf.write_mimic_iv_ecg(tmp_path, [row, row], measurements=False)
    source = SOURCES["mimic_iv_ecg"](str(tmp_path))
    (record,), skipped = source.list_records()
    assert [(s.record_id, s.reason) for s in skipped] == [("40689238", "study_id listed twice (line 3)")]
    assert source.tasks == {} and record.codes == [] and record.labels == {}
    assert (record.record_id, record.patient_id, record.duration_s) == ("40689238", "10000032", 10.0)
    assert source.index_files() == [str(tmp_path / "record_list.csv")]
    os.remove(tmp_path / "record_list.csv")
    with pytest.raises(FileNotFoundError, match=f"is {tmp_path} the MIMIC-IV-ECG root folder"):
        source.list_records()
    for content in (b"", bytes(range(256)) * 4):  # empty, random bytes: the CSV is named
        (tmp_path / "record_list.csv").write_bytes(content)
        with pytest.raises(ValueError, match=f"{tmp_path}/record_list.csv: not a readable CSV"):
            source.list_records()
