"""stmem-prepare on hostile or mistaken inputs (issue 33): paths read from files stay inside their
folder, link loops are walked once, plausible mistakes are one-line errors, nothing written is
lost, and no non-finite value reaches a shard."""

import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

import native_fixtures as nf
from data_prep import writer
from data_prep.cli import main
from data_prep.sources import SOURCES
from data_fixtures import read_split
from stmem_jax.core import fileio
from stmem_jax.core import shards as fmt
from stmem_jax.core.ecgfile import ECGFileError, read_ecg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEADS = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
RNG_BYTES = np.random.default_rng(33).integers(0, 256, 4096, dtype=np.uint8).tobytes()


def record(folder, name, seconds=10.0, seed=0, **kwargs):
    """A 12-lead WFDB record at 250 Hz (one 10 s window by default)."""
    signal_ = nf.ecg_like(np.random.default_rng(seed), 12, int(seconds * 250), 250)
    return nf.write_wfdb(folder, name, signal_, 250, LEADS, **kwargs)


def ids(output):
    """(record id, window) of every example of a prepared folder."""
    manifest = json.loads((output / "manifest.json").read_text())
    return sorted((ex["record_id"].decode(), int(ex["window"])) for split in manifest["splits"]
                  for ex in read_split(output, split))


def reasons(output):
    return {s["record_id"]: s["reason"] for s in json.loads((output / "manifest.json").read_text())["skipped"]}


def one_line_error(capsys, *fragments):
    """The command's stderr is one ``stmem-prepare: error: ...`` line holding ``fragments``."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("stmem-prepare: error: ") and all(f in err for f in fragments), err
    return err


class Hangs(BaseException):
    """Not an OSError: no ``except OSError`` in the code under test may swallow it."""


@contextlib.contextmanager
def deadline(seconds):
    """Fails instead of hanging (a FIFO opened for reading blocks until a writer comes)."""
    def expire(*_):
        raise Hangs(f"no result after {seconds} s: the run hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# 1. Paths read from inside files stay inside their folder.

@pytest.fixture()
def escaping(tmp_path):
    """A folder with one good WFDB record and records whose headers name a file outside it: an
    absolute path, ``..``, ``..`` through a sub-folder and a link; plus damaged headers."""
    secret = tmp_path / "secret.dat"
    secret.write_bytes(np.random.default_rng(1).integers(-3000, 3000, 2500 * 12, dtype=np.int16).tobytes())
    folder = tmp_path / "input"
    record(folder, "good")
    for name, target in {"abs": str(secret), "rel": "../secret.dat", "deep": "x/../../secret.dat",
                         "link": "link.dat"}.items():
        record(folder, name)
        header = folder / f"{name}.hea"
        header.write_text(header.read_text().replace(f"{name}.dat", target))
        os.remove(folder / f"{name}.dat")
    os.symlink(secret, folder / "link.dat")
    text = (folder / "good.hea").read_text()
    (folder / "empty.hea").write_text("")
    (folder / "random.hea").write_bytes(RNG_BYTES)
    (folder / "truncated.hea").write_text(text[:len(text) // 2])
    return folder


@pytest.mark.parametrize("source", ["wfdb", "files"])
def test_headers_naming_signal_files_outside_their_folder_are_skipped(escaping, tmp_path, source):
    out = tmp_path / "out"
    assert main([source, "--input", str(escaping), "--output", str(out), "--quiet", "--workers", "1"]) == 3
    assert {r for r, _ in ids(out)} == {"good" if source == "wfdb" else "good.hea"}
    found = {r.removesuffix(".hea"): reason for r, reason in reasons(out).items()}
    for name in ("abs", "rel", "deep", "link"):
        assert "signal file" in found[name] and "leads outside" in found[name], found[name]
    assert {"empty", "random", "truncated"} <= set(found)
    with pytest.raises(ECGFileError, match="signal file '/.*secret.dat' leads outside"):
        read_ecg(str(escaping / "abs.hea"))


def test_index_csv_paths_outside_the_root_are_skipped_with_their_line(tmp_path):
    root, outside = tmp_path / "ptbxl", tmp_path / "outside"
    nf.write_ptbxl(root, [{"ecg_id": i, "patient_id": i, "scp_codes": {"NORM": 100.0}, "strat_fold": 1}
                          for i in range(1, 5)])
    nf.write_wfdb(outside, "x_hr", nf.ecg_like(np.random.default_rng(0), 12, 5000, 500), 500, nf.PTBXL_LEADS)
    os.symlink(outside, root / "records500" / "link")
    table = pd.read_csv(root / "ptbxl_database.csv")
    table["filename_hr"] = table["filename_hr"].astype(object)
    table.loc[1:, "filename_hr"] = ["../outside/x_hr", str(outside / "x_hr"), "records500/link/x_hr"]
    table.to_csv(root / "ptbxl_database.csv", index=False)
    records, skipped = SOURCES["ptbxl"](str(root)).list_records()
    assert [r.record_id for r in records] == ["1"]
    for skip, line in zip(skipped, (3, 4, 5)):
        assert skip.path == str(root / "ptbxl_database.csv")
        assert re.fullmatch(rf"line {line}: filename_hr '.*x_hr.hea' leads outside {root}", skip.reason), skip.reason

    mimic = tmp_path / "mimic"
    nf.write_mimic_iv_ecg(mimic, [{"subject_id": 10000001, "study_id": 40000001},
                                  {"subject_id": 10000002, "study_id": 40000002}])
    listing = pd.read_csv(mimic / "record_list.csv")
    nf.write_wfdb(outside, "40000002", nf.ecg_like(np.random.default_rng(0), 12, 5000, 500), 500, nf.MIMIC_LEADS)
    listing.loc[1, "path"] = "../outside/40000002"
    listing.to_csv(mimic / "record_list.csv", index=False)
    records, skipped = SOURCES["mimic_iv_ecg"](str(mimic)).list_records()
    assert [r.record_id for r in records] == ["40000001"]
    assert [(s.record_id, s.reason) for s in skipped] == \
        [("40000002", f"path (line 3) '../outside/40000002.hea' leads outside {mimic}")]


# 2. Folder link loops are walked once.

def test_a_link_loop_gives_each_record_once_and_a_link_outside_is_not_followed(tmp_path):
    folder, outside = tmp_path / "input", tmp_path / "outside"
    for i in range(4):
        record(folder / "sub", f"r{i}", seed=i, comments=[f"Dx: {'ab'[i % 2]}"])
    record(outside, "far")
    os.symlink("..", folder / "sub" / "up")
    os.symlink(outside, folder / "far")
    os.symlink(outside / "far.hea", folder / "alias.hea")
    os.symlink(folder / "gone.hea", folder / "broken.hea")
    os.symlink("r0.hea", folder / "sub" / "same.hea")  # a link inside the folder is read like a file
    out = tmp_path / "out"
    assert main(["wfdb", "--input", str(folder), "--output", str(out), "--quiet", "--workers", "1"]) == 3
    assert ids(out) == [(f"sub/r{i}", 0) for i in range(4)] + [("sub/same", 0)]
    assert reasons(out) == {"far": "a link to a folder outside the input folder (not followed)",
                            "alias.hea": "a link to a file outside the input folder", "broken.hea": "a broken link"}

    training = tmp_path / "training"
    for i in range(3):
        record(training / "cpsc_2018" / "g1", f"A{i:04d}", seed=i, comments=["Dx: 426783006"], mat=True)
    os.symlink("..", training / "cpsc_2018" / "g1" / "up")
    records, skipped = SOURCES["challenge2021"](str(tmp_path)).list_records()
    assert [r.record_id for r in records] == ["cpsc_2018/A0000", "cpsc_2018/A0001", "cpsc_2018/A0002"]
    assert skipped == []


# 3. Plausible mistakes are one-line errors.

@pytest.fixture()
def wfdb_folder(tmp_path):
    folder = tmp_path / "input"
    for i in range(3):
        record(folder, f"r{i}", seed=i)
    return folder


def test_a_read_only_output_folder_is_a_one_line_error(wfdb_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    makedirs = os.makedirs

    def read_only(path, *args, **kwargs):  # as a read-only mount answers (tests run as root here)
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", read_only)
    assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet"]) == 1
    one_line_error(capsys, str(out), "Read-only file system")


def test_a_full_disk_is_a_one_line_error_naming_the_file_and_leaves_no_partial_file(wfdb_folder, tmp_path,
                                                                                    monkeypatch, capsys):
    class Full:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real = fileio.io.open
    monkeypatch.setattr(fileio, "io", types.SimpleNamespace(
        open=lambda path, mode="r", **kw: Full(real(path, mode)) if mode == "wb" else real(path, mode, **kw)))
    out = tmp_path / "out"
    assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet", "--workers", "1"]) == 1
    one_line_error(capsys, str(out / "train-00000-of-00001"), "No space left on device")
    left = [name for _, _, names in os.walk(out) for name in names]
    assert not [name for name in left if ".tmp-" in name] and "manifest.json" not in left


def code15(folder, patients=(1, 2)):
    tracings = np.zeros((2, 4096, 12), np.float32)
    for i in range(2):
        tracings[i, 48:4048] = nf.ecg_like(np.random.default_rng(i), 12, 4000, 400).T
    nf.write_code15(folder, tracings, [11, 12], list(patients))
    return folder / "exams.csv"


def test_code15_exams_csv_without_exam_id_or_with_an_empty_patient(tmp_path, capsys):
    csv_path = code15(tmp_path / "code15")
    table = pd.read_csv(csv_path)
    table.drop(columns=["exam_id"]).to_csv(csv_path, index=False)
    assert main(["code15", "--input", str(tmp_path / "code15"), "--output", str(tmp_path / "a"), "--quiet"]) == 1
    one_line_error(capsys, str(csv_path), "missing column(s) exam_id")

    table.loc[1, "patient_id"] = None
    table.to_csv(csv_path, index=False)
    assert main(["code15", "--input", str(tmp_path / "code15"), "--output", str(tmp_path / "b"), "--quiet"]) == 3
    assert ids(tmp_path / "b") == [("11", 0)]
    assert reasons(tmp_path / "b") == {"12": "line 3: patient_id is not a number ('')"}


# 4. Damaged index files, MAT files, FIFOs, --overwrite, races, empty results, non-finite values.

INDEX_FILES = {"code15": "exams.csv", "cpsc2018": "TrainingSet1/REFERENCE.csv", "physionet2017": "REFERENCE.csv",
               "ptbxl": "ptbxl_database.csv", "mimic_iv_ecg": "record_list.csv"}


@pytest.mark.parametrize("damage", ["empty", "random bytes"])
@pytest.mark.parametrize("source", sorted(INDEX_FILES))
def test_an_empty_or_binary_index_csv_is_a_one_line_error_naming_it(tmp_path, capsys, source, damage):
    path = tmp_path / "in" / INDEX_FILES[source]
    path.parent.mkdir(parents=True)
    path.write_bytes(b"" if damage == "empty" else RNG_BYTES)
    assert main([source, "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--quiet"]) == 1
    one_line_error(capsys, str(path))
    assert not (tmp_path / "out").exists()


def test_a_truncated_index_csv_skips_its_cut_row_naming_the_line(tmp_path):
    csv_path = code15(tmp_path)
    text = csv_path.read_text()
    csv_path.write_text(text[:text.rindex("\n", 0, len(text) - 1) + 12])  # the last row cut after exam_id
    records, skipped = SOURCES["code15"](str(tmp_path)).list_records()
    assert [r.record_id for r in records] == ["11"]
    assert [(s.record_id, s.path, s.reason[:7]) for s in skipped] == [("12", str(csv_path), "line 3:")]


def test_mat_signal_files_must_be_the_matrix_their_header_describes(tmp_path, monkeypatch):
    folder = tmp_path / "training" / "cpsc_2018" / "g1"
    for i in range(6):
        record(folder, f"A{i:04d}", seed=i, comments=["Dx: 426783006"], mat=True)
    good = (folder / "A0000.mat").read_bytes()
    (folder / "A0001.mat").write_bytes(RNG_BYTES * (len(good) // len(RNG_BYTES)) + RNG_BYTES[:len(good) % 4096])
    (folder / "A0002.mat").write_bytes(good[:10])
    (folder / "A0003.mat").write_bytes(b"")
    from scipy import io as sio

    values = sio.loadmat(folder / "A0004.mat")["val"]
    sio.savemat(folder / "A0004.mat", {"val": np.ascontiguousarray(values.T)}, format="4")  # samples x leads
    import wfdb.io.convert.matlab

    monkeypatch.chdir(folder)  # wfdb writes a MATLAB 5 copy of A0005 (A0005m.mat) here
    wfdb.io.convert.matlab.wfdb_to_mat("A0005")
    monkeypatch.undo()
    os.remove(folder / "A0005.hea")
    records, _ = SOURCES["challenge2021"](str(tmp_path)).list_records()
    source = SOURCES["challenge2021"](str(tmp_path))
    outcome = {}
    for r in records:
        try:
            outcome[r.record_id] = source.load(r).data.shape
        except Exception as error:  # noqa: BLE001 - the reason is what is checked
            outcome[r.record_id] = str(error)
    assert outcome.pop("cpsc_2018/A0000") == (12, 2500) and outcome.pop("cpsc_2018/A0005m") == (12, 2500)
    assert set(outcome) == {f"cpsc_2018/A000{i}" for i in range(1, 5)}
    for reason in outcome.values():
        assert "is not the MATLAB matrix its header describes (12 x 2500 int16 values from byte 24)" in reason


def test_fifos_and_other_non_regular_files_are_skipped_not_read(tmp_path, capsys):
    folder = tmp_path / "input"
    record(folder, "good")
    record(folder, "piped")
    os.remove(folder / "piped.dat")
    os.mkfifo(folder / "piped.dat")  # a header naming a FIFO as its signal file
    os.mkfifo(folder / "fifo.hea")
    os.mkfifo(folder / "fifo.xml")
    os.mkfifo(tmp_path / "labels.csv")
    mimic = tmp_path / "mimic"
    nf.write_mimic_iv_ecg(mimic, [{"subject_id": 10000001, "study_id": 40000001}], measurements=False)
    os.mkfifo(mimic / "machine_measurements.csv")
    with deadline(30):
        assert main(["wfdb", "--input", str(folder), "--output", str(tmp_path / "a"), "--quiet"]) == 3
        assert main(["files", "--input", str(folder), "--output", str(tmp_path / "b"), "--quiet"]) == 3
        capsys.readouterr()
        assert main(["files", "--input", str(folder), "--output", str(tmp_path / "c"), "--quiet",
                     "--labels", str(tmp_path / "labels.csv")]) == 1
        one_line_error(capsys, f"{tmp_path / 'labels.csv'}: the labels CSV is not a regular file")
        assert main(["mimic_iv_ecg", "--input", str(mimic), "--output", str(tmp_path / "d"), "--quiet"]) == 1
        one_line_error(capsys, f"{mimic / 'machine_measurements.csv'}: the file is not a regular file")
    assert reasons(tmp_path / "a") == {"fifo.hea": "is not a regular file",
                                       "piped": "signal file piped.dat is not a regular file"}
    assert reasons(tmp_path / "b") == {"fifo.hea": "is not a regular file", "fifo.xml": "is not a regular file",
                                       "piped.hea": "signal file piped.dat is not a regular file"}


def snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_overwrite_keeps_the_old_output_until_the_new_one_is_complete(wfdb_folder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet"]) == 0
    before = snapshot(out)
    empty, short = tmp_path / "empty", tmp_path / "short"
    empty.mkdir()
    record(short, "s0", seconds=4)
    assert main(["wfdb", "--input", str(empty), "--output", str(out), "--quiet", "--overwrite"]) == 1
    one_line_error(capsys, "no usable records")
    assert main(["wfdb", "--input", str(short), "--output", str(out), "--quiet", "--overwrite"]) == 1
    one_line_error(capsys, str(short), "no record gave a window", "shorter than the window")
    assert snapshot(out) == before

    record(wfdb_folder, "r3", seed=3)
    real_run_job, seen = writer.run_job, []

    def watched(job, *args):
        seen.append(snapshot(out) == before)  # the old dataset is whole while the new one is written
        return real_run_job(job, *args)

    monkeypatch.setattr(writer, "run_job", watched)
    assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet", "--overwrite"]) == 0
    assert seen and all(seen)
    assert [r for r, _ in ids(out)] == ["r0", "r1", "r2", "r3"]
    assert sorted(os.listdir(tmp_path)) == ["empty", "input", "out", "short"]  # no staging folder, no lock


def test_a_second_run_on_the_same_output_fails_naming_the_lock_and_a_dead_holder_blocks_nothing(
        wfdb_folder, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom data_prep.writer import _lock\n"
                               f"with _lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet"]) == 1
        one_line_error(capsys, str(tmp_path / ".out.stmem-prepare.lock"), f"(pid {holder.pid}) is writing {out}")
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(out), "--quiet"]) == 0


def test_a_second_run_through_a_link_to_the_output_fails_naming_the_lock(wfdb_folder, tmp_path, capsys):
    out = tmp_path / "out"
    os.makedirs(out)
    os.symlink(out, tmp_path / "alias")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom data_prep.writer import _lock\n"
                               f"with _lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["wfdb", "--input", str(wfdb_folder), "--output", str(tmp_path / "alias"), "--quiet"]) == 1
        one_line_error(capsys, str(tmp_path / ".out.stmem-prepare.lock"), f"(pid {holder.pid}) is writing")
        assert not os.listdir(out)
    finally:
        holder.kill()
        holder.wait()


def test_a_run_where_every_record_is_unusable_is_an_error_without_a_manifest(tmp_path, capsys):
    folder = tmp_path / "input"
    record(folder, "s0", seconds=4)
    flat = np.zeros((12, 2500))
    nf.write_wfdb(folder, "s1", flat, 250, LEADS)
    assert main(["wfdb", "--input", str(folder), "--output", str(tmp_path / "out"), "--quiet", "--flat-leads",
                 "drop"]) == 1
    one_line_error(capsys, str(folder), "no record gave a window", "2 skipped")
    assert not (tmp_path / "out").exists()


def test_values_beyond_float32_never_reach_a_shard(tmp_path):
    folder = tmp_path / "input"
    record(folder, "good")
    record(folder, "huge", seed=1)
    header = folder / "huge.hea"  # 1e-300 steps per mV: about 1e303 mV, finite in float64, infinite in float32
    header.write_text(header.read_text().replace("1000.0(0)/mV", "1e-300(0)/mV"))
    out = tmp_path / "out"
    assert main(["wfdb", "--input", str(folder), "--output", str(out), "--quiet"]) == 3
    assert reasons(out) == {"huge": "no window without NaN or infinite samples"}
    examples = [ex for split in ("train",) for ex in read_split(out, split)]
    assert [ex["record_id"] for ex in examples] == [b"good"] and np.isfinite(examples[0]["scale"])
    with pytest.raises(ValueError, match="NaN or infinite"):
        fmt.make_example(np.full((12, 2500), np.inf), record_id="x", patient_id="x", source="x", split="train")
