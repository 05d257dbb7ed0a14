"""The benchmark scripts run (tiny settings) and print their tables."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args, **env):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, JAX_PLATFORMS="cpu", **env))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.parametrize("source,records", [("ptbxl", 40), ("files", 6)])
def test_prepare_benchmark_prints_records_per_second(source, records):
    lines = run("prepare.py", "--source", source, "--records", str(records), "--workers", "1").splitlines()
    assert lines[0].split() == ["source", "workers", "records", "seconds", "records/s"]
    name, workers, used, seconds, rate = lines[1].split()
    assert (name, workers, int(used)) == (source, "1", records) and float(rate) > 0


@pytest.mark.slow
@pytest.mark.parametrize("step", ["pretrain", "finetune"])
def test_train_throughput_benchmark_prints_mfu_and_memory_without_tensorflow(step, tmp_path):
    for package in ("tensorflow", "tensorflow_datasets"):  # as on a GPU host that has no TensorFlow
        os.makedirs(tmp_path / package)
        (tmp_path / package / "__init__.py").write_text("raise ImportError('no TensorFlow on this host')\n")
    out = run("train_throughput.py", "--step", step, "--presets", "tiny", "--dtypes", "float32", "--batch", "4",
              "--steps", "1", PYTHONPATH=str(tmp_path))
    row = [line for line in out.splitlines() if line.startswith("tiny")][0].split()
    assert f"st_mem {step} step" in out and row[:4] == ["tiny", "float32", "4", "1"] and float(row[5]) > 0
    assert row[7].endswith("%") and float(row[9]) > 0.1  # peak RSS in GB


@pytest.mark.slow
def test_input_pipeline_benchmark_prints_rates():
    out = run("input_pipeline.py", "--windows", "64", "--batch-size", "16", "--batches", "2")
    assert "examples/s" in out and "pre-training" in out and "3 folders mixed" in out


@pytest.mark.slow
def test_linear_probe_benchmark_times_both_paths():
    out = run("linear_probe.py", "--examples", "16", "--batch-size", "8")
    rows = {line[:56].strip(): float(line[56:]) for line in out.splitlines() if line.startswith(("frozen", "cached"))}
    assert len(rows) == 3 and all(seconds >= 0 for seconds in rows.values())


@pytest.mark.slow
@pytest.mark.parametrize("step", ["pretrain", "finetune"])
def test_torch_reference_benchmark_prints_the_same_columns(step):
    out = run("torch_reference.py", "--step", step, "--presets", "tiny", "--batch", "2", "--steps", "1",
              "--threads", "1")
    row = [line for line in out.splitlines() if line.startswith("tiny")][0].split()
    assert f"{step} step" in out and row[:2] == ["tiny", "2"] and float(row[3]) > 0 and float(row[4]) > 0
    assert float(row[5]) > 0.1  # peak RSS in GB


@pytest.mark.slow
def test_fault_injection_kills_preparation_and_the_rerun_gives_the_same_shards():
    out = run("fault_injection.py", "--runs", "2", "--kinds", "prepare", "--records", "40").splitlines()
    trials = [line.split() for line in out if line.split()[:1] in (["0"], ["1"])]
    assert [t[1:3] for t in trials] == [["prepare", "SIGKILL"], ["prepare", "SIGTERM"]]
    assert all(t[-1] == "same" for t in trials) and out[-1] == "2 trial(s), 0 failure(s)"


def test_plan_table_fits_each_cell_from_its_two_cached_compiles(tmp_path):
    """The table's arithmetic on compiles already in the cache (none is redone): memory affine in the
    batch, the largest per-chip batch under the chip's HBM."""
    gib, cache = 2 ** 30, tmp_path / "plan.jsonl"
    totals = {False: (3 * gib, 5 * gib), True: (2 * gib, 3 * gib)}  # at 32 and 64 per chip
    with open(cache, "w") as f:
        for remat, pair in totals.items():
            for batch, total in zip((32, 64), pair):
                f.write(json.dumps({"key": ["v5e", "pretrain", remat, 1, batch], "total": total, "hbm": 16 * gib,
                                    "seconds": 1.0}) + "\n")
    out = run("plan_table.py", "--generations", "v5e", "--steps", "pretrain", "--fsdp", "1", "--cache", str(cache))
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| v5e")]
    # no remat: 1 GiB fixed + 1/16 GiB per example -> 240; remat: 1 GiB + 1/32 GiB -> 480
    assert [[c.strip() for c in r] for r in rows] == [
        ["v5e (16 GiB)", "pretrain", "no", "1", "1.07", "67", "240"],
        ["v5e (16 GiB)", "pretrain", "yes", "1", "1.07", "34", "480"]], out
    assert "0 compiled now" in out
    with open(cache, "a") as f:  # a cell with one of its two compiles: left out, not compiled
        f.write(json.dumps({"key": ["v4", "pretrain", False, 1, 32], "total": gib, "hbm": 16 * gib,
                            "seconds": 1.0}) + "\n")
    out = run("plan_table.py", "--generations", "v5e,v4", "--steps", "pretrain", "--fsdp", "1", "--cache", str(cache),
              "--cached-only")
    assert [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| v")] == ["v5e (16 GiB)"] * 2
    assert "2 cells, 0 compiled now" in out


@pytest.mark.slow
def test_augment_speed_benchmark_prints_a_rate_per_variant():
    out = run("augment_speed.py", "--examples", "64", "--repeats", "1").splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in out[3:] if line.strip()}
    assert set(rows) == {"none", "authors", "stmem_jax"} and all(float(r) > 0 for v in rows.values() for r in v)
