"""Clinical ECG files: read_ecg on every format, stmem-prepare files, stmem-embed --files and
stmem-predict --files, checked against computations that do not use the library's code paths."""

import copy
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import signal as sps

from data_prep import cli as prepare_cli
from data_fixtures import read_split
from data_prep.synthetic import write_cardiosoft_xml
from native_fixtures import ecg_like, write_edf, write_hl7_aecg, write_wfdb
from stmem_jax import api, embed, infer, predict
from stmem_jax.core import fingerprint
from stmem_jax.core.ecgfile import ECGFileError, ECGFileWarning, list_files, read_ecg
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.recipe import AUTHORS
from stmem_jax.model_dir import save_model
from stmem_jax import methods
from stmem_jax.models import create_model, init_variables

DICOM = get_testdata_file("waveform_ecg.dcm")
NOT_ECG_DICOM = get_testdata_file("CT_small.dcm")
SIZES = dict(width=64, depth=2, heads=1, mlp_dim=128)


def dicom_mv():
    """pydicom's own reading of the rhythm group: (12, 10000) in mV, and the channel names."""
    ds = pydicom.dcmread(DICOM)
    group = ds.WaveformSequence[0]
    units = {c.ChannelSensitivityUnitsSequence[0].CodeValue for c in group.ChannelDefinitionSequence}
    assert units == {"uV"} and float(group.SamplingFrequency) == 1000
    names = [c.ChannelSourceSequence[0].CodeMeaning for c in group.ChannelDefinitionSequence]
    return ds.waveform_array(0).T / 1000.0, names, str(ds.PatientID)


def independent_window(x_mv, fs_in):
    """The authors' preparation written out with scipy: the first 10 s at the native rate, resampled to
    2,500 samples by the Fourier method, not filtered (the pipeline filters each crop)."""
    return sps.resample(x_mv[:, :10 * fs_in], 2500, axis=-1)


def test_read_ecg_gives_the_dicom_rhythm_in_millivolts_with_its_patient():
    expected, names, patient = dicom_mv()
    assert names[:2] == ["Lead I (Einthoven)", "Lead II"] and names[-1] == "Lead V6"
    ecg = api.read_ecg(DICOM)
    assert ecg.leads == LEAD_NAMES and ecg.fs == 1000 and ecg.signal.dtype == np.float32
    assert ecg.signal.shape == (12, 10000)  # the rhythm, not the 1200-sample median beats of the second group
    np.testing.assert_allclose(ecg.signal, expected, atol=1e-6)
    assert ecg.metadata["patient_id"] == patient == "642341" and ecg.metadata["format"] == "DICOM Waveform"
    assert ecg.select("1").signal.shape == (1, 10000)


def test_a_dicom_with_another_multiplex_group_keeps_the_first_rhythm_with_a_warning(tmp_path):
    ds = pydicom.dcmread(DICOM)
    extra = copy.deepcopy(ds.WaveformSequence[0])
    extra.MultiplexGroupLabel = "RHYTHM 2"
    ds.WaveformSequence.append(extra)
    path = str(tmp_path / "three_groups.dcm")
    ds.save_as(path)
    with pytest.warns(ECGFileWarning, match="three_groups.dcm: .*1 additional multiplex group"):
        ecg = read_ecg(path)
    np.testing.assert_allclose(ecg.signal, dicom_mv()[0], atol=1e-6)


def test_files_in_other_formats_give_the_same_signal_back(tmp_path):
    rng = np.random.default_rng(3)
    x = ecg_like(rng, 12, 5000, 500)
    steps = {}
    steps["a.edf"] = write_edf(str(tmp_path / "a.edf"), x, 500, LEAD_NAMES)
    write_hl7_aecg(str(tmp_path / "a.xml"), x, 500, LEAD_NAMES, patient_id="P1")
    steps["a.xml"] = 0.5e-3
    write_wfdb(str(tmp_path), "a", x, 500, ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"])
    steps["a.hea"] = 0.5e-3
    write_cardiosoft_xml(str(tmp_path / "cardiosoft.xml"), x, 500, patient_id="P2", resolution_uv=5.0)
    steps["cardiosoft.xml"] = 2.5e-3
    assert list_files(str(tmp_path)) == sorted(steps)  # a.dat belongs to a.hea
    for name, step in steps.items():
        ecg = read_ecg(str(tmp_path / name))
        assert ecg.leads == LEAD_NAMES and ecg.fs == 500, name
        assert np.abs(ecg.signal - x).max() <= step + 1e-6, name
    assert read_ecg(str(tmp_path / "cardiosoft.xml")).metadata["patient_id"] == "P2"


def test_eight_lead_files_get_the_derived_limb_leads_and_other_channels_are_left_out_with_a_warning(tmp_path):
    rng = np.random.default_rng(4)
    x = ecg_like(rng, 9, 5000, 500)
    names = ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "Resp"]
    path = str(tmp_path / "muse_like.edf")
    step = write_edf(path, x, 500, names)
    with pytest.warns(ECGFileWarning, match="muse_like.edf: left out channel.*Resp"):
        ecg = read_ecg(path)
    assert ecg.leads == LEAD_NAMES and ecg.metadata["derived_leads"] == ["III", "aVR", "aVL", "aVF"]
    lead_i, lead_ii = x[0], x[1]
    for name, expected in (("III", lead_ii - lead_i), ("aVR", -(lead_i + lead_ii) / 2),
                           ("aVL", lead_i - lead_ii / 2), ("aVF", lead_ii - lead_i / 2)):
        assert np.abs(ecg.signal[LEAD_NAMES.index(name)] - expected).max() <= 2 * step + 1e-6, name


def test_unusable_files_are_errors_naming_the_file_and_the_problem(tmp_path):
    rng = np.random.default_rng(5)
    x = ecg_like(rng, 12, 5000, 500)
    write_hl7_aecg(str(tmp_path / "counts.xml"), x, 500, LEAD_NAMES, scale_unit="")
    write_cardiosoft_xml(str(tmp_path / "cut.xml"), x, 500)
    data = (tmp_path / "cut.xml").read_bytes()
    (tmp_path / "cut.xml").write_bytes(data[:len(data) // 2])
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(3000))
    (tmp_path / "empty.dcm").write_bytes(b"")
    cases = {"counts.xml": "no scale from its samples to mV", "cut.xml": "ends early",
             "random.bin": "not an ECG file", "empty.dcm": "empty file", "missing.xml": "no such file"}
    for name, reason in cases.items():
        with pytest.raises(ECGFileError, match=reason) as error:
            read_ecg(str(tmp_path / name))
        assert str(error.value).startswith(str(tmp_path / name)), name
    with pytest.raises(ECGFileError, match="CT_small.dcm: .*no usable Waveform"):
        read_ecg(NOT_ECG_DICOM)
    with pytest.raises(ECGFileError, match="one.xml: lacks lead.*V1"):
        api.ECG(x[:1].astype(np.float32), 500.0, ("I",), "one.xml").select("12")


def mixed_folder(root):
    """Good files (the DICOM, a CardioSoft XML, a 25 s EDF), a truncated XML, random bytes and a
    non-ECG DICOM."""
    os.makedirs(root / "site", exist_ok=True)
    shutil.copy(DICOM, root / "site" / "exam.dcm")
    rng = np.random.default_rng(6)
    write_cardiosoft_xml(str(root / "ukb.xml"), ecg_like(rng, 12, 5000, 500), 500, patient_id="1000123")
    write_edf(str(root / "holter.edf"), ecg_like(rng, 12, 25 * 500, 500), 500, LEAD_NAMES)
    write_cardiosoft_xml(str(root / "cut.xml"), ecg_like(rng, 12, 5000, 500), 500)
    data = (root / "cut.xml").read_bytes()
    (root / "cut.xml").write_bytes(data[:len(data) // 3])
    (root / "noise.bin").write_bytes(np.random.default_rng(1).bytes(5000))
    shutil.copy(NOT_ECG_DICOM, root / "ct.dcm")
    return root


def examples_of(output, split):
    """The split's examples through TFDS, text fields decoded."""
    return [{k: v.decode() if isinstance(v, bytes) else v for k, v in e.items()} for e in read_split(output, split)]


def test_prepare_files_keeps_the_good_files_and_names_each_bad_one(tmp_path):
    folder = mixed_folder(tmp_path / "in")
    output = str(tmp_path / "out")
    assert prepare_cli.main(["files", "--input", str(folder), "--output", output, "--workers", "1", "--quiet"]) == 3
    manifest = json.load(open(os.path.join(output, "manifest.json")))
    examples = examples_of(output, "train")
    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"cut.xml", "noise.bin", "ct.dcm"}
    assert "ends early" in reasons["cut.xml"] and "not an ECG file" in reasons["noise.bin"]
    assert "Waveform" in reasons["ct.dcm"]
    windows = sorted((e["record_id"], e["window"]) for e in examples)
    assert windows == [("holter.edf", 0), ("holter.edf", 1), ("site/exam.dcm", 0), ("ukb.xml", 0)]

    exam = next(e for e in examples if e["record_id"] == "site/exam.dcm")
    expected, _, patient = dicom_mv()
    stored = exam["mv"]
    assert np.abs(stored - independent_window(expected, 1000)).max() < 2e-4  # int16 storage of ~2 mV: 0.03 uV
    assert exam["patient_id"] == patient
    assert {e["record_id"]: e["patient_id"] for e in examples}["ukb.xml"] == "1000123"
    prints = fingerprint.load(os.path.join(output, fingerprint.FILE))
    assert "642341" in set(prints["patient_id"])


def test_prepare_files_with_labels_splits_by_the_patient_the_file_names(tmp_path):
    folder = tmp_path / "in"
    os.makedirs(folder)
    rows = ["file,label,patient"]
    for k in range(4):  # four exams of the DICOM's patient: one split
        shutil.copy(DICOM, folder / f"dicom{k}.dcm")
        rows.append(f"dicom{k}.dcm,{'AF' if k % 2 else 'SR'},")
    rng = np.random.default_rng(7)
    for k in range(16):
        write_cardiosoft_xml(str(folder / f"ukb{k}.xml"), ecg_like(rng, 12, 5000, 500), 500, patient_id=f"U{k}")
        rows.append(f"ukb{k}.xml,{'AF' if k % 2 else 'SR'},{'CSV' + str(k // 2) if k < 4 else ''}")
    write_cardiosoft_xml(str(folder / "unlabelled.xml"), ecg_like(rng, 12, 5000, 500), 500)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    output = str(tmp_path / "out")
    assert prepare_cli.main(["files", "--input", str(folder), "--output", output, "--labels",
                             str(tmp_path / "labels.csv"), "--workers", "2", "--quiet"]) == 3
    manifest = json.load(open(os.path.join(output, "manifest.json")))
    splits, patients = {}, {}
    for split in manifest["splits"]:
        for e in examples_of(output, split):
            splits[e["record_id"]], patients[e["record_id"]] = split, e["patient_id"]
    assert manifest["tasks"]["label"] == {"classes": ["AF", "SR"], "multilabel": False}
    assert len({splits[f"dicom{k}.dcm"] for k in range(4)}) == 1
    assert {patients[f"dicom{k}.dcm"] for k in range(4)} == {"642341"}
    assert patients["ukb0.xml"] == patients["ukb1.xml"] == "CSV0" and splits["ukb0.xml"] == splits["ukb1.xml"]
    assert patients["ukb9.xml"] == "U9"
    assert [(s["record_id"], s["reason"]) for s in manifest["skipped"]] == [("unlabelled.xml",
                                                                              "no row in the labels CSV")]


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    model = create_model("st_mem", "tiny", **SIZES, decoder_width=64, decoder_depth=1, decoder_heads=1)
    directory = tmp_path_factory.mktemp("encoder") / "encoder"
    save_model(directory, *methods.get("st_mem").encoder(model, init_variables(model, jax.random.key(0))))
    return str(directory)


def test_embed_files_gives_api_embed_of_the_pydicom_array_and_one_row_per_window(encoder_dir, tmp_path):
    folder = mixed_folder(tmp_path / "in")
    output = str(tmp_path / "features.npz")
    assert embed.main(["--model", encoder_dir, "--files", str(folder), "--output", output, "--batch-size", "2"]) == 3
    out = np.load(output)
    assert list(out["record_id"]) == ["holter.edf", "site/exam.dcm", "ukb.xml"] and list(out["window"]) == [0, 0, 0]
    encoder, variables = api.load_encoder(encoder_dir)  # with the recipe it was saved with
    expected, _, _ = dicom_mv()
    reference = api.embed(encoder, variables, expected, fs=1000)
    np.testing.assert_allclose(out["features"][1], reference[0], atol=1e-4)
    np.testing.assert_allclose(api.embed(encoder, variables, [read_ecg(DICOM)]), reference, atol=1e-4)

    per_window = str(tmp_path / "windows.npz")
    assert embed.main(["--model", encoder_dir, "--files", str(folder), "--pattern", "*.edf", "--per-window",
                       "--output", per_window]) == 0
    assert list(np.load(per_window)["window"]) == [0, 1]
    assert embed.main(["--model", encoder_dir, "--files", str(folder), "--output", per_window]) == 1  # exists


def test_predict_files_applies_the_models_leads_and_recipe(tmp_path):
    model = create_model("st_mem_classifier", "tiny", **SIZES, num_classes=3)
    variables = init_variables(model, jax.random.key(2))
    run = tmp_path / "run"
    recipe = dataclasses.replace(AUTHORS, crop_samples=model.seq_len)
    save_model(run / "model", model, variables, metadata={"classes": ["AF", "NORM", "STD"], "multilabel": True,
                                                         "leads": "1", "recipe": recipe.to_dict()})
    folder = tmp_path / "in"
    os.makedirs(folder)
    shutil.copy(DICOM, folder / "exam.dcm")
    rng = np.random.default_rng(8)
    write_cardiosoft_xml(str(folder / "no_lead_i.xml"), ecg_like(rng, 1, 5000, 500), 500, lead_names=("II",))
    output = str(tmp_path / "preds.csv")
    assert predict.main(["--model", str(run), "--files", str(folder), "--output", output]) == 3
    lines = open(output).read().splitlines()
    assert lines[0] == "record_id,window,AF,NORM,STD" and len(lines) == 2
    row = lines[1].split(",")
    assert row[:2] == ["exam.dcm", "0"]
    expected, _, _ = dicom_mv()
    inputs = api.model_inputs(expected[:1], 1000, crop_samples=model.seq_len)  # lead I, 3 crops
    probs = infer.probabilities_fn(model, (0,), True)(variables["params"], inputs)
    np.testing.assert_allclose([float(v) for v in row[2:]], np.asarray(probs)[0], atol=1e-5)
    assert predict.main(["--model", str(run), "--files", str(folder), "--output", output]) == 1  # exists
