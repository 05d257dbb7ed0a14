"""The leakage check: the same ECG found in two prepared folders whatever its file format, name and
gain; the command, the old-folder fallback and the fine-tuning report and exclusion."""

import csv
import json
import os
import shutil

import jax
import numpy as np
import pytest

from data_prep.cli import main as prepare
from stmem_jax import overlap
from stmem_jax.core import fingerprint
from stmem_jax.model_dir import save_model
from stmem_jax import cli, methods
from stmem_jax.models import create_model, init_variables
from stmem_jax.train import downstream
from tests import native_fixtures as nf
from tests.test_downstream import SIZES, run_config

NAMES = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
SHARED = (2, 5, 9, 12, 17, 20)  # PTB-XL ecg_ids re-packaged in the Challenge fixture


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A PTB-XL folder of 20 records and a Challenge 2021 folder holding 6 of them (other names, .mat,
    gain 200 instead of 1000) among 10 unrelated records, both through stmem-prepare."""
    root = tmp_path_factory.mktemp("leak")
    rng = np.random.default_rng(7)
    rows = [{"ecg_id": i, "patient_id": 100 + i // 2, "scp_codes": {"NORM": 100.0} if i % 2 else {"IMI": 80.0},
             "strat_fold": i % 10 + 1, "signal": nf.ecg_like(rng, 12, 5000, 500)} for i in range(1, 21)]
    nf.write_ptbxl(root / "ptbxl_native", rows)
    challenge = root / "challenge_native" / "training"
    for n, ecg_id in enumerate(SHARED):
        nf.write_wfdb(challenge / "ptb-xl" / "g1", f"HR{n:05d}", rows[ecg_id - 1]["signal"], 500, NAMES,
                      ["Age: 60", "Sex: Male", "Dx: 426783006"], mat=True, gain=200)
    for n in range(10):
        nf.write_wfdb(challenge / "georgia" / "g1", f"E{n:05d}", nf.ecg_like(rng, 12, 5000, 500), 500, NAMES,
                      ["Age: 50", "Sex: Female", "Dx: 426783006"], mat=True, gain=200)
    out = {name: str(root / name) for name in ("ptbxl", "challenge")}
    assert prepare(["ptbxl", "--input", str(root / "ptbxl_native"), "--output", out["ptbxl"], "--quiet",
                    "--workers", "1"]) == 0
    assert prepare(["challenge2021", "--input", str(root / "challenge_native"), "--output", out["challenge"],
                    "--split-mode", "train", "--quiet", "--workers", "1"]) == 0
    return out


def ptbxl_split(ecg_id):
    return {8: "validation", 9: "test", 10: "test"}.get(ecg_id % 10 + 1, "train")


def test_repackaged_records_are_found_exactly_and_unrelated_ones_never(folders, synthetic_shards, tmp_path,
                                                                     capsys):
    table = fingerprint.load(os.path.join(folders["ptbxl"], fingerprint.FILE))
    manifest = json.load(open(os.path.join(folders["ptbxl"], "manifest.json")))
    assert manifest["fingerprints"]["windows"] == len(table["window"]) == 20
    path = tmp_path / "overlap.csv"
    assert cli.overlap([folders["challenge"], folders["ptbxl"], "--csv", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"total: {len(SHARED)} windows, {len({100 + i // 2 for i in SHARED})} patients"
    expected = {s: sum(ptbxl_split(i) == s for i in SHARED) for s in ("train", "validation", "test")}
    for split, count in expected.items():
        (line,) = [line for line in lines if line.startswith(f"{split}: ")]
        assert line.startswith(f"{split}: {count} of ")
    rows = list(csv.DictReader(open(path)))
    assert sorted((int(r["b_record_id"]), r["a_record_id"]) for r in rows) == \
        [(ecg_id, f"ptb-xl/HR{n:05d}") for n, ecg_id in enumerate(SHARED)]
    assert {r["b_split"] for r in rows} <= set(expected) and {r["a_split"] for r in rows} == {"train"}
    report, pairs = overlap.compare(synthetic_shards, folders["ptbxl"])
    assert report["total"] == {"windows": 0, "patients": 0} and pairs == []
    report, _ = overlap.compare(folders["challenge"], synthetic_shards)
    assert report["total"]["windows"] == 0
    # pre-trained on a folder's train split, fine-tuned on the same folder: only train overlaps
    report, _ = overlap.compare(folders["ptbxl"], folders["ptbxl"], a_split="train")
    assert {s: v["windows"] == (v["of_windows"] if s == "train" else 0) for s, v in report["splits"].items()} == \
        {"train": True, "validation": True, "test": True}


def test_folders_without_a_fingerprint_file_are_fingerprinted_from_their_shards_and_damaged_ones_named(folders, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folders["challenge"], old)
    os.remove(old / fingerprint.FILE)
    new = fingerprint.load(os.path.join(folders["challenge"], fingerprint.FILE))
    computed = overlap.folder_table(str(old), json.load(open(old / "manifest.json")))
    for key in new:
        np.testing.assert_array_equal(computed[key], new[key])
    data = open(os.path.join(folders["challenge"], fingerprint.FILE), "rb").read()
    for damaged in (data[:len(data) // 2], b"", bytes(range(256))):  # truncated, empty, random bytes
        (old / fingerprint.FILE).write_bytes(damaged)
        with pytest.raises(ValueError, match=f"{old}/fingerprints.npz is unreadable"):
            overlap.compare(str(old), folders["ptbxl"])


@pytest.mark.slow
def test_finetuning_from_a_pretraining_workdir_reports_and_can_exclude_the_overlap(folders, tmp_path):
    init = tmp_path / "pretrain"
    model = create_model("st_mem", "tiny", **SIZES, decoder_width=64, decoder_depth=1, decoder_heads=1)
    save_model(init / "encoder", *methods.get("st_mem").encoder(model, init_variables(model, jax.random.key(0))))
    (init / "config.json").write_text(json.dumps({"method": "st_mem",
                                                    "data": {"dir": folders["challenge"], "split": "train"}}))
    shared_tests = {str(i) for i in SHARED if ptbxl_split(i) == "test"}
    for exclude in (False, True):
        workdir = tmp_path / f"run{exclude}"
        config = run_config(folders["ptbxl"], task="superdiagnostic", mode="linprobe", init=str(init),
                            **{"train.num_steps": 2, "train.batch_size": 4, "data.exclude_pretraining_overlap": exclude})
        record = downstream.train(config, str(workdir))
        leak = record["pretraining_overlap"]
        assert leak["total"]["windows"] == len(SHARED) and leak["excluded"] is exclude
        assert leak["splits"]["test"]["windows"] == len(shared_tests)
        tested = set(np.load(workdir / "test_predictions.npz")["record_id"])
        assert (tested & shared_tests) == (set() if exclude else shared_tests)
