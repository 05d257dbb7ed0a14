"""A pod's run where it keeps its data: every command a pod runs, on a bucket of a GCS-API server on
localhost (``tests/gcs_server.py``), reached through STORAGE_EMULATOR_HOST alone. One scenario shares
the bucket-prepared data: prepare into the bucket; pre-train from it into a bucket workdir; two
processes train together on another bucket workdir, are killed (SIGKILL) and restarted, and end
equal to the uninterrupted run; fine-tune with ``init`` in the bucket; embed and predict reading and
writing the bucket. Nothing is written locally: no folder named after a URL appears."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from stmem_jax.core import fileio
from tests.gcs_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"model.width": 64, "model.depth": 2, "model.heads": 1, "model.mlp_dim": 128, "model.decoder_width": 64,
         "model.decoder_depth": 1, "model.decoder_heads": 1, "train.batch_size": 16, "train.warmup_steps": 2,
         "train.base_lr": 2e-3, "train.num_steps": 5, "log.every_steps": 1, "checkpoint.every_steps": 2,
         "eval.every_steps": 5, "log.figure_every_steps": 5, "checkpoint.asynchronous": False}


def command(args, cwd, devices=1, **popen):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def finished(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode in (0, 3), err[-3000:]  # 3: finished, some files skipped
    return out


def pretrain_args(workdir, data, **overrides):
    flags = {**SMALL, "data.dir": data, **overrides}
    return ["-m", "stmem_jax.cli", "pretrain", "--config", "st_mem:tiny", f"--workdir={workdir}",
            *[f"--config.{k}={v}" for k, v in flags.items()]]


def summary(stdout):
    (line,) = [line for line in stdout.splitlines() if line.startswith("summary: ")]
    return json.loads(line[len("summary: "):])


@pytest.mark.slow
def test_a_pod_run_from_a_bucket_prepare_pretrain_killed_multihost_finetune_embed_predict(bucket, tmp_path):
    shards = f"{bucket}/shards"
    finished(command(["-m", "data_prep", "synthetic", "--output", shards, "--records", "120", "--workers", "1",
                      "--shard-windows", "30", "--quiet"], tmp_path))  # native records and shards in the bucket
    assert fileio.isfile(f"{bucket}/shards/manifest.json") and fileio.isfile(f"{bucket}/shards-native/ptbxl_database.csv")

    # the uninterrupted run: one process, two devices
    full = f"{bucket}/full"
    reference = summary(finished(command(pretrain_args(full, shards), tmp_path, devices=2)))
    for name in ("config.json", "metrics.jsonl", "model/model.json", "encoder/model.json", "checkpoints/checksums.json",
                 "figures/reconstruction_0000005.png"):
        assert fileio.isfile(f"{full}/{name}"), name
    assert [r["step"] for r in map(json.loads, fileio.read_text(f"{full}/metrics.jsonl").splitlines())
            if r["split"] == "train"] == [1, 2, 3, 4, 5]
    assert fileio.walk(f"{full}/tensorboard")[0][0].startswith("events.out.tfevents")

    # two processes on one bucket workdir, both killed at step 3 (after the checkpoint of step 2), restarted
    multi = f"{bucket}/multi"
    port = free_port()

    def processes():
        flags = {"distributed.num_processes": 2, "distributed.coordinator_address": f"127.0.0.1:{port}"}
        return [command(pretrain_args(multi, shards, **flags, **{"distributed.process_id": i}), tmp_path)
                for i in range(2)]

    procs = processes()
    for line in procs[0].stdout:
        if line.startswith("step 3/"):
            break
    for proc in procs:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert fileio.exists(f"{multi}/checkpoints/2") and not fileio.exists(f"{multi}/model")
    port = free_port()
    resumed = [summary(finished(proc)) for proc in processes()]
    assert resumed[0]["local_params_checksum"] == resumed[1]["local_params_checksum"]
    assert resumed[0]["local_params_checksum"] == pytest.approx(reference["local_params_checksum"], rel=1e-5)
    from stmem_jax.model_dir import load_model

    # two processes reduce in another order than one: where a gradient is about zero, Adam's step (at most
    # the peak learning rate, 1.25e-4) may take the other sign, so runs may part by 2 x 5 steps x 1.25e-4
    for a, b in zip(*(jax_leaves(load_model(f"{run}/model")[1]) for run in (multi, full))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1.25e-3)

    # fine-tuning from the bucket's pre-trained run, into the bucket
    finetune = f"{bucket}/finetune"
    flags = {"model.preset": "tiny", "data.dir": shards, "data.task": "rhythm", "init": full, "train.num_steps": 4,
             "train.batch_size": 16, "eval.batch_size": 16, "eval.every_steps": 4, "log.every_steps": 2,
             "checkpoint.asynchronous": False}
    finished(command(["-m", "stmem_jax.cli", "finetune", "--config", "ptbxl:st_mem", f"--workdir={finetune}",
                      *[f"--config.{k}={v}" for k, v in flags.items()]], tmp_path))
    record = json.loads(fileio.read_text(f"{finetune}/test_metrics.json"))
    assert record["init"] == full and fileio.isfile(f"{finetune}/model/model.json")

    # embed ECG files in the bucket, predict a prepared split: outputs in the bucket
    finished(command(["-m", "stmem_jax.embed", "--model", full, "--files", f"{bucket}/shards-native/records500",
                      "--pattern", "0000[1-3]_hr.hea", "--output", f"{bucket}/out/features.npz"], tmp_path))
    with fileio.open(f"{bucket}/out/features.npz", "rb") as f, np.load(f) as features:
        assert features["features"].shape[0] == 3
    finished(command(["-m", "stmem_jax.predict", "--model", finetune, "--data", shards, "--split", "test",
                      "--output", f"{bucket}/out/predictions.csv"], tmp_path))
    rows = fileio.read_text(f"{bucket}/out/predictions.csv").splitlines()
    assert rows[0].startswith("record_id,window,") and len(rows) > 1
    assert os.listdir(tmp_path) == []  # no local folder named after a URL


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]
