import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import signal as sps

import native_fixtures as nf
from data_prep import writer
from data_prep.cli import main
from data_prep.sources import SOURCES
from data_prep.writer import prepare
from data_fixtures import read_split
from stmem_jax.core.recipe import AUTHORS, Recipe, band_filter, resample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_windows(stored, fs, recipe=Recipe()):
    """The windows of a record: stmem-jax's recipe resamples (polyphase) and filters it whole; the
    authors' cuts 10 s at the native rate and resamples each window by the Fourier method, unfiltered."""
    if recipe.resample == "fft":
        native = 10 * fs
        return [sps.resample(stored[:, i * native:(i + 1) * native], 2500, axis=-1)
                for i in range(stored.shape[1] // native)]
    processed = band_filter(resample(stored, fs, 250), recipe)
    return [processed[:, i * 2500:(i + 1) * 2500] for i in range(processed.shape[1] // 2500)]


def tolerance(window):
    return np.abs(window).max() / 32767  # int16 storage step


PTBXL_ROWS = [
    # patient 1: two records, fold 1 -> train; patient 2: fold 8 -> validation; patient 3: fold 9 -> test
    {"ecg_id": 1, "patient_id": 1, "scp_codes": {"NORM": 100.0, "SR": 0.0}, "strat_fold": 1},
    {"ecg_id": 2, "patient_id": 1, "scp_codes": {"IMI": 80.0, "ABQRS": 0.0, "SR": 0.0}, "strat_fold": 1},
    {"ecg_id": 3, "patient_id": 2, "scp_codes": {"CRBBB": 100.0, "AFIB": 0.0}, "strat_fold": 8},
    {"ecg_id": 4, "patient_id": 3, "scp_codes": {"LVH": 50.0, "IMI": 100.0}, "strat_fold": 9},
    {"ecg_id": 5, "patient_id": 4, "scp_codes": {"XYZ": 100.0}, "strat_fold": 2},  # unknown code
    {"ecg_id": 1001, "patient_id": 5, "scp_codes": {"ISCAL": 100.0}, "strat_fold": 10},
]


@pytest.fixture(scope="module")
def ptbxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl")
    rows = [dict(r) for r in PTBXL_ROWS]
    rows.append({"ecg_id": 6, "patient_id": 6, "scp_codes": {"NORM": 100.0}, "strat_fold": 3})
    nan_signal = nf.ecg_like(np.random.default_rng(1), 12, 5000, 500)
    nan_signal[4, 100:200] = np.nan
    rows.append({"ecg_id": 7, "patient_id": 7, "scp_codes": {"NORM": 100.0}, "strat_fold": 3, "signal": nan_signal})
    stored = nf.write_ptbxl(root, rows)
    with open(root / "records500/00000/00006_hr.dat", "r+b") as f:  # truncate record 6
        f.truncate(1000)
    out = root / "shards"
    manifest = prepare(SOURCES["ptbxl"](str(root)), str(out), Recipe(), progress=False)
    return root, out, manifest, stored


def test_ptbxl_windows_match_fixture_signals_sample_by_sample(ptbxl):
    root, out, manifest, stored = ptbxl
    examples = {ex["record_id"].decode(): ex for split in ("train", "validation", "test")
                for ex in read_split(out, split)}
    assert sorted(examples) == ["1", "1001", "2", "3", "4"]
    for record_id, ex in examples.items():
        (window,) = expected_windows(stored[int(record_id)], 500)
        assert ex["mv"].shape == (12, 2500)
        np.testing.assert_allclose(ex["mv"], window, atol=tolerance(window) * 0.51 + 1e-7)


def test_ptbxl_labels_splits_and_manifest(ptbxl):
    root, out, manifest, _ = ptbxl
    train = {ex["record_id"].decode(): ex for ex in read_split(out, "train")}
    assert set(train) == {"1", "2"}
    two = train["2"]
    assert [c.decode() for c in two["codes"]] == ["IMI", "ABQRS", "SR"]
    np.testing.assert_allclose(two["code_weights"], [0.8, 0.0, 0.0])
    labels = {task: [c.decode() for c in v] for task, v in two["labels"].items()}
    assert labels["superdiagnostic"] == ["MI"] and labels["st_mem"] == ["MI"]
    assert labels["subdiagnostic"] == ["IMI"] and labels["form"] == ["ABQRS"] and labels["rhythm"] == ["SR"]
    test = {ex["record_id"].decode(): ex for ex in read_split(out, "test")}
    assert [c.decode() for c in test["4"]["labels"]["superdiagnostic"]] == ["HYP", "MI"]
    assert list(test["4"]["labels"]["st_mem"]) == []  # two superclasses: not in the single-label task
    assert test["4"]["fold"] == 9 and test["4"]["patient_id"] == b"3" and test["4"]["sex"] == b"M"

    assert manifest["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert manifest["sampling_rate"] == 250 and manifest["window_samples"] == 2500
    assert manifest["filter"]["highpass_hz"] == 0.67 and manifest["filter"]["lowpass_hz"] == 40.0
    assert manifest["tasks"]["superdiagnostic"] == {"classes": ["CD", "HYP", "MI", "NORM", "STTC"], "multilabel": True}
    assert manifest["tasks"]["st_mem"]["multilabel"] is False
    assert manifest["splits"]["train"]["examples"] == 2
    assert manifest["splits"]["train"]["classes"]["superdiagnostic"] == {"MI": 1, "NORM": 1}
    assert manifest["splits"]["validation"]["classes"]["st_mem"] == {"CD": 1}
    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert "unknown SCP code(s) XYZ" in reasons["5"]
    assert "unreadable signal" in reasons["6"]
    assert reasons["7"] in ("1 window(s) with NaN dropped", "no window without NaN") or "NaN" in reasons["7"]
    assert manifest["skipped_count"] == 3
    assert manifest["storage"]["max_abs_error_uv"] < 0.1
    assert manifest["inputs"]["signal_files"] == 2 * 7 and "ptbxl_database.csv" in manifest["inputs"]["index_files"]
    assert manifest["tool"].startswith("stmem-prepare ")
    assert sorted(os.listdir(out)) == sorted(["dataset_info.json", "features.json", "manifest.json",
                                              "fingerprints.npz", "train-00000-of-00001",
                                              "validation-00000-of-00001", "test-00000-of-00001"])
    prints = np.load(os.path.join(out, "fingerprints.npz"))
    shards = [ex["record_id"].decode() for split in ("train", "validation", "test") for ex in read_split(out, split)]
    assert list(prints["record_id"]) == shards and manifest["fingerprints"]["windows"] == len(shards)


def test_ptbxl_csv_problems_name_the_file_and_the_line(tmp_path):
    rows = [dict(r) for r in PTBXL_ROWS[:2]]
    rows.append({"ecg_id": 3, "patient_id": 2, "scp_codes": {"NORM": "high"}, "strat_fold": 8})
    rows.append({"ecg_id": 4, "patient_id": 3, "scp_codes": {"NORM": 100.0}, "strat_fold": float("nan")})
    nf.write_ptbxl(tmp_path, rows)
    records, skipped = SOURCES["ptbxl"](str(tmp_path)).list_records()
    csv_path = str(tmp_path / "ptbxl_database.csv")
    assert [r.record_id for r in records] == ["1", "2"]
    reasons = {s.record_id: (s.path, s.reason) for s in skipped}
    assert reasons["3"][0] == csv_path and reasons["3"][1].startswith("line 4: unparsable scp_codes")
    assert reasons["4"] == (csv_path, "line 5: strat_fold is not a number (nan)")
    pd.read_csv(csv_path).drop(columns=["strat_fold"]).to_csv(csv_path, index=False)
    with pytest.raises(ValueError, match=re.escape(csv_path) + ": missing column.*strat_fold"):
        SOURCES["ptbxl"](str(tmp_path)).list_records()
    (tmp_path / "ptbxl_database.csv").write_bytes(b"\x00\xff" * 100)
    with pytest.raises(ValueError, match=re.escape(csv_path)):
        SOURCES["ptbxl"](str(tmp_path)).list_records()


def test_existing_output_is_never_overwritten_without_flag(ptbxl, tmp_path, capsys):
    root, out, _, _ = ptbxl
    before = {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    assert main(["ptbxl", "--input", str(root), "--output", str(out), "--quiet"]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert before == {name: os.path.getmtime(out / name) for name in os.listdir(out)}
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    assert main(["ptbxl", "--input", str(root), "--output", str(foreign), "--quiet", "--overwrite"]) == 1
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_command_exit_status_counts_skips_and_strict_names_the_file(ptbxl, tmp_path, capsys):
    root, _, _, _ = ptbxl
    assert main(["ptbxl", "--input", str(root), "--output", str(tmp_path / "a"), "--quiet", "--no-filter",
                 "--split-scheme", "benchmark"]) == 3
    printed = capsys.readouterr().out
    assert "skipped records: 3" in printed
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["filter"] is None
    # benchmark folds: 1-8 train (records 1, 2, 3), 9 validation (4), 10 test (1001)
    assert [manifest["splits"][s]["records"] for s in ("train", "validation", "test")] == [3, 1, 1]
    assert main(["ptbxl", "--input", str(root), "--output", str(tmp_path / "b"), "--quiet", "--strict"]) == 1
    assert "XYZ" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["wfdb", "--input", str(empty), "--output", str(tmp_path / "c"), "--quiet"]) == 1
    assert "no usable records" in capsys.readouterr().err


def test_resume_after_kill_redoes_nothing_and_matches_a_full_run(tmp_path, monkeypatch):
    root = tmp_path / "native"
    rows = [{"ecg_id": i, "patient_id": i, "scp_codes": {"NORM": 100.0}, "strat_fold": 1 + i % 7} for i in range(1, 9)]
    nf.write_ptbxl(root, rows)
    reference = prepare(SOURCES["ptbxl"](str(root)), str(tmp_path / "full"), Recipe(), shard_windows=2,
                        progress=False)
    real_run_job, calls = writer.run_job, []

    def dying(job, *args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed while working on the third shard
        calls.append(job.name)
        return real_run_job(job, *args)

    monkeypatch.setattr(writer, "run_job", dying)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(SOURCES["ptbxl"](str(root)), str(out), Recipe(), shard_windows=2, progress=False)
    first = {name: os.path.getmtime(out / name) for name in calls}
    assert not (out / "manifest.json").exists()
    redone = []
    monkeypatch.setattr(writer, "run_job", lambda job, *a: (redone.append(job.name), real_run_job(job, *a))[1])
    manifest = prepare(SOURCES["ptbxl"](str(root)), str(out), Recipe(), shard_windows=2, progress=False)
    assert not set(redone) & set(calls) and len(redone) == 2
    assert first == {name: os.path.getmtime(out / name) for name in calls}
    assert manifest["splits"] == reference["splits"]
    ids = sorted(ex["record_id"] for ex in read_split(out, "train"))
    assert ids == sorted(ex["record_id"] for ex in read_split(tmp_path / "full", "train"))
    assert len(ids) == len(set(ids)) == 8


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_the_same_command_resumes(tmp_path):
    from data_prep.synthetic import write_ptbxl

    native = write_ptbxl(tmp_path / "native", 160, seed=0, progress=False)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "data_prep", "ptbxl", "--input", native, "--output", str(out), "--workers", "2",
               "--shard-windows", "8", "--quiet"]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not glob.glob(str(out / "*-of-*")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "run the same command again to resume" in err and not (out / "manifest.json").exists()
    before = sorted(os.listdir(out)) + sorted(os.listdir(out / ".progress"))
    time.sleep(2)
    assert sorted(os.listdir(out)) + sorted(os.listdir(out / ".progress")) == before  # no worker writes on
    (out / "train-00000-of-00099.tmp-999999").write_bytes(b"partial")  # as a killed worker leaves it
    assert subprocess.run(command, cwd=ROOT, capture_output=True, timeout=600).returncode == 0
    assert not [name for name in os.listdir(out) if ".tmp-" in name]
    manifest = json.load(open(out / "manifest.json"))
    assert sum(s["records"] for s in manifest["splits"].values()) == 160


def test_challenge2021_subsets_labels_and_patient_disjoint_stratified_split(tmp_path):
    root = tmp_path / "training"
    rng = np.random.default_rng(0)
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    stored = {}
    for i in range(3):
        data = nf.ecg_like(rng, 12, 5000, 500)
        stored[f"chapman_shaoxing/JS{i:05d}"] = nf.write_wfdb(root / "chapman_shaoxing" / "g1", f"JS{i:05d}", data, 500,
                                                              names, ["Age: 70", "Sex: Male", "Dx: 426783006"], mat=True)
    codes = ["426783006", "164889003", "713427006", "270492004"]  # NSR, AF, RBBB (equivalent code), I-AVB
    for i in range(40):
        data = nf.ecg_like(rng, 12, 7500 if i else 12500, 500)  # 15 s -> 1 window; record 0: 25 s -> 2
        dx = codes[i % 4] + (",164884008" if i == 5 else "")
        stored[f"cpsc_2018/A{i:04d}"] = nf.write_wfdb(root / "cpsc_2018" / "g1", f"A{i:04d}", data, 500,
                                                      [n.upper() if i == 1 else n for n in names],
                                                      ["Age: 50", "Sex: Female", f"Dx: {dx}"], mat=True)
    bad = root / "cpsc_2018" / "g2"
    nf.write_wfdb(bad, "B0001", nf.ecg_like(rng, 12, 5000, 500), 500, names, ["Dx: abc"], mat=True)
    flat = nf.ecg_like(rng, 12, 5000, 500)
    flat[3] = 0.0
    nf.write_wfdb(bad, "B0002", flat, 500, names, ["Dx: 164931005"], mat=True)
    nf.write_wfdb(bad, "B0003", nf.ecg_like(rng, 11, 5000, 500), 500, names[:11], ["Dx: 164931005"], mat=True)
    nf.write_wfdb(bad, "B0004", nf.ecg_like(rng, 12, 2000, 500), 500, names, ["Dx: 164931005"], mat=True)
    (bad / "B0005.hea").write_text("garbage\n")
    out = tmp_path / "out"
    assert main(["challenge2021", "--input", str(tmp_path), "--output", str(out), "--subsets",
                 "chapman_shaoxing,cpsc_2018", "--seed", "3", "--quiet", "--workers", "1"]) == 3  # 4 skipped
    manifest = json.loads((out / "manifest.json").read_text())

    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert "unknown label code" in reasons["cpsc_2018/B0001"]
    assert "cpsc_2018/B0002" not in reasons  # a flat lead: kept, as the authors' recipe keeps it
    assert reasons["cpsc_2018/B0003"].startswith("missing lead(s) V6")
    assert reasons["cpsc_2018/B0004"].startswith("shorter than the window (4.00 s")
    assert "unreadable header" in reasons["cpsc_2018/B0005"]

    examples = {}
    for split in ("train", "validation", "test"):
        for ex in read_split(out, split):
            examples[(ex["record_id"].decode(), int(ex["window"]))] = (split, ex)
    assert all(examples[(f"chapman_shaoxing/JS{i:05d}", 0)][0] == "train" for i in range(3))
    assert ("cpsc_2018/B0002", 0) in examples
    assert (("cpsc_2018/A0000", 1)) in examples  # 25 s -> two windows, same split
    assert examples[("cpsc_2018/A0000", 0)][0] == examples[("cpsc_2018/A0000", 1)][0]
    for (record_id, w), (_, ex) in examples.items():
        if record_id in stored:
            window = expected_windows(stored[record_id], 500, AUTHORS)[w]
            np.testing.assert_allclose(ex["mv"], window, atol=tolerance(window) * 0.51 + 1e-7)
    labels = {k[0]: [c.decode() for c in ex["labels"]["cpsc2018"]] for k, (_, ex) in examples.items()}
    assert labels["cpsc_2018/A0002"] == ["RBBB"]
    assert labels["cpsc_2018/A0005"] == ["AF", "PVC"]
    assert [c.decode() for c in examples[("cpsc_2018/A0005", 0)][1]["labels"]["cpsc2018_single"]] == []
    assert [c.decode() for c in examples[("cpsc_2018/A0002", 0)][1]["codes"]] == ["59118001"]
    # 40 CPSC records, 10 per class (A0005 counts as AF): about 7/1/2 of every class in train/validation/test
    per_split = manifest["splits"]
    for cls in ("Normal", "AF", "RBBB", "I-AVB"):
        records = {s: {k[0] for k, (split, ex) in examples.items() if split == s and k[0].startswith("cpsc")
                       and [c.decode() for c in ex["labels"]["cpsc2018"]][:1] == [cls]} for s in per_split}
        counts = [len(records[s]) for s in ("train", "validation", "test")]
        assert counts[0] in (6, 7, 8) and counts[1] >= 1 and counts[2] >= 1 and sum(counts) == 10, (cls, counts)


def test_cpsc2018_original_release(tmp_path):
    signals = nf.write_cpsc_original(tmp_path, [("A0001", [1], 12), ("A0002", [5, 7], 21), ("A0003", [12], 10)])
    manifest = prepare(SOURCES["cpsc2018"](str(tmp_path)), str(tmp_path / "out"), Recipe(), progress=False)
    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert "unknown label code" in reasons["A0003"]
    found = {(ex["record_id"].decode(), int(ex["window"])): ex for split in manifest["splits"]
             for ex in read_split(tmp_path / "out", split)}
    assert set(found) == {("A0001", 0), ("A0002", 0), ("A0002", 1)}
    window = expected_windows(signals["A0002"], 500)[1]
    np.testing.assert_allclose(found[("A0002", 1)]["mv"], window, atol=tolerance(window) * 0.51 + 1e-7)
    assert [c.decode() for c in found[("A0002", 0)]["labels"]["cpsc2018"]] == ["RBBB", "PVC"]
    assert found[("A0001", 0)]["sex"] == b"F" and found[("A0001", 0)]["age"] == 63


def test_code15_strips_padding_and_resamples_from_400_hz(tmp_path):
    rng = np.random.default_rng(0)
    ten = nf.ecg_like(rng, 12, 4000, 400)
    seven = nf.ecg_like(rng, 12, 2800, 400)
    tracings = np.zeros((4, 4096, 12), np.float32)
    tracings[0, 48:4048] = ten.T
    tracings[1, 648:3448] = seven.T
    tracings[2, 48:4048] = ten.T
    nf.write_code15(tmp_path, tracings, [11, 12, 0, 14], [1, 2, 0, 4])
    manifest = prepare(SOURCES["code15"](str(tmp_path)), str(tmp_path / "out"), Recipe(), progress=False)
    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["12"].startswith("shorter than the window (7.00 s")
    assert reasons["exams_part0.hdf5[2]"] == "padding row (exam_id 0)"
    assert "14" in reasons  # all zeros
    assert list(manifest["splits"]) == ["train"]
    (ex,) = read_split(tmp_path / "out", "train")
    window = expected_windows(ten.astype(np.float32).astype(np.float64), 400)[0]
    np.testing.assert_allclose(ex["mv"], window, atol=tolerance(window) * 0.51 + 1e-6)
    assert [c.decode() for c in ex["labels"]["code15"]] == ["RBBB"] and ex["sex"] == b"M"


def test_physionet2017_single_lead_and_wfdb_folder_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "training2017"
    stored = nf.write_wfdb(folder, "A00001", nf.ecg_like(rng, 1, 9000, 300), 300, ["ECG"], mat=True)
    nf.write_wfdb(folder, "A00002", nf.ecg_like(rng, 1, 2700, 300), 300, ["ECG"], mat=True)
    nf.write_wfdb(folder, "A00003", nf.ecg_like(rng, 1, 9000, 300), 300, ["ECG"], mat=True)
    (folder / "REFERENCE.csv").write_text("A00001,A\nA00002,N\nA00003,X\n")
    manifest = prepare(SOURCES["physionet2017"](str(folder)), str(tmp_path / "out"), Recipe(), progress=False)
    assert manifest["leads"] == ["I"]
    reasons = {s["record_id"]: s["reason"] for s in manifest["skipped"]}
    assert reasons["A00002"].startswith("shorter") and "unknown label code 'X'" in reasons["A00003"]
    examples = [ex for split in manifest["splits"] for ex in read_split(tmp_path / "out", split)]
    assert sorted(int(ex["window"]) for ex in examples) == [0, 1, 2]
    windows = expected_windows(stored, 300)
    for ex in examples:
        assert ex["mv"].shape == (1, 2500)
        np.testing.assert_allclose(ex["mv"], windows[ex["window"]], atol=tolerance(windows[ex["window"]]) * 0.51 + 1e-7)
        assert [c.decode() for c in ex["labels"]["af2017"]] == ["A"]

    generic = tmp_path / "generic"
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    for i in range(4):
        nf.write_wfdb(generic / "sub", f"r{i}", nf.ecg_like(rng, 12, 2500, 250), 250, names)
    (tmp_path / "labels.csv").write_text("record,label\nsub/r0,x\nsub/r1,y;z\nr2,x\n")
    out = tmp_path / "generic_out"
    assert main(["wfdb", "--input", str(generic), "--output", str(out), "--labels", str(tmp_path / "labels.csv"),
                 "--quiet", "--workers", "1"]) == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tasks"]["label"] == {"classes": ["x", "y", "z"], "multilabel": True}
    assert [s["reason"] for s in manifest["skipped"]] == ["no row in the labels CSV"]


def test_parallel_workers_write_the_same_shards(ptbxl, tmp_path):
    root, out, manifest, _ = ptbxl
    parallel = prepare(SOURCES["ptbxl"](str(root)), str(tmp_path / "par"), Recipe(), workers=2,
                       shard_windows=1, progress=False)
    assert {s: v["examples"] for s, v in parallel["splits"].items()} == \
        {s: v["examples"] for s, v in manifest["splits"].items()}
    assert parallel["splits"]["train"]["shard_lengths"] == [1, 1, 0, 0]  # records 6 and 7 are skipped
    serial = {ex["record_id"]: ex["mv"] for ex in read_split(out, "train")}
    for ex in read_split(tmp_path / "par", "train"):
        np.testing.assert_array_equal(ex["mv"], serial[ex["record_id"]])


def test_manifest_records_the_recipe_that_the_pipeline_reads(ptbxl, tmp_path, capsys):
    _, out, manifest, _ = ptbxl
    assert manifest["recipe"] == Recipe().to_dict()
    assert Recipe.of_manifest(manifest) == Recipe()
    older = {k: v for k, v in manifest.items() if k != "recipe"}  # written before the recipe was recorded
    assert Recipe.of_manifest(older) == Recipe()
    unfiltered = Recipe.of_manifest({**older, "filter": None})
    assert not unfiltered.filtered and unfiltered.fs == 250
    with pytest.raises(ValueError, match="window must last more than 0 s"):
        Recipe(window_s=0)
    with pytest.raises(ValueError, match="lowpass_hz must lie between 0 and half"):
        Recipe(fs=50)
    root = ptbxl[0]
    assert main(["ptbxl", "--input", str(root), "--output", str(tmp_path / "x"), "--window-s", "0", "--quiet"]) == 1
    assert "window must last more than 0 s" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_resampling_and_filter_are_the_documented_ones():
    x = np.random.default_rng(0).standard_normal((2, 5000))
    np.testing.assert_allclose(resample(x, 500, 250), sps.resample_poly(x, 1, 2, axis=-1))
    hp = sps.butter(5, 0.67, "highpass", fs=250, output="sos")
    lp = sps.butter(5, 40.0, "lowpass", fs=250, output="sos")
    np.testing.assert_allclose(band_filter(x, Recipe()), sps.sosfiltfilt(lp, sps.sosfiltfilt(hp, x)))
    np.testing.assert_array_equal(band_filter(x, Recipe(highpass_hz=None, lowpass_hz=None)), x)


def test_synthetic_source_command_writes_ptbxl_layout_and_shards(tmp_path):
    native, out = tmp_path / "native", tmp_path / "shards"
    assert main(["synthetic", "--input", str(native), "--output", str(out), "--records", "30", "--quiet",
                 "--workers", "1"]) == 0
    assert (native / "ptbxl_database.csv").exists() and (native / "records500" / "00000" / "00001_hr.hea").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "ptbxl" and sum(s["records"] for s in manifest["splits"].values()) == 30
    assert set(manifest["tasks"]["st_mem"]["classes"]) <= {"CD", "HYP", "MI", "NORM", "STTC"}


def test_examples_are_encoded_as_tfds_encodes_them_without_tensorflow(tmp_path):
    import tensorflow as tf

    from stmem_jax.core import shards as fmt

    rng = np.random.default_rng(0)
    features = fmt.features_dict(12, 2500, ["diag", "rhythm"])
    for codes, labels in [(["NORM", "SR"], {"diag": ["NORM"], "rhythm": ["SR", "AFIB"]}),
                          ([], {"diag": [], "rhythm": ["é"]})]:
        example = fmt.make_example(rng.standard_normal((12, 2500)), record_id="r1", patient_id="", source="ptbxl",
                                   split="test", window=3, age=float("nan"), sex="F", fold=7, codes=codes,
                                   code_weights=[0.5] * len(codes), labels=labels)
        ours = tf.train.Example.FromString(fmt.serialize_example(example))
        assert ours == tf.train.Example.FromString(features.serialize_example(example))
    path = str(tmp_path / "shard")
    records = [b"", b"x" * 300, fmt.serialize_example(example)]
    assert fmt.write_shard(path, records)[0] == 3
    assert list(tf.data.TFRecordDataset(path).as_numpy_iterator()) == records  # checks both CRCs



def test_model_inputs_are_what_the_pipeline_feeds_the_model_under_either_recipe(ptbxl, tmp_path):
    """``api.model_inputs`` of a raw record equals the evaluation crops the input pipeline makes of the
    same record prepared into shards (up to the int16 storage), under the authors' recipe (FFT per
    window, each crop filtered) and stmem-jax's (polyphase, the record filtered at preparation)."""
    from stmem_jax import api
    from stmem_jax.data.pipeline import InputConfig, make_dataset

    root, prepared, _, stored = ptbxl
    prepare(SOURCES["ptbxl"](str(root)), str(tmp_path / "authors"), AUTHORS, progress=False)
    for recipe, folder in ((AUTHORS, str(tmp_path / "authors")), (Recipe(), str(prepared))):
        config = InputConfig(folder, split="train", batch_size=2, training=False, filter=recipe.filter_on,
                             resample=recipe.resample, flat_leads=recipe.flat_leads)
        seen = 0
        for batch in make_dataset(config, process_index=0, process_count=1).as_numpy_iterator():
            for record_id, valid, series in zip(batch["record_id"], batch["valid"], batch["series"]):
                if valid:
                    expected = api.model_inputs(stored[int(record_id)], fs=500, recipe=recipe)[0]
                    assert np.abs(series - expected).max() < 1e-3, (recipe.name, record_id)
                    seen += 1
        assert seen >= 2
