import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from stmem_jax import methods
from stmem_jax.model_dir import load_model
from stmem_jax.models import create_model
from stmem_jax.train import loop, pretrain, steps
from stmem_jax.train.optim import adamw
from tests.data_fixtures import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "pretrain", "st_mem.py")
SMALL = {"model.width": 64, "model.depth": 2, "model.heads": 1, "model.mlp_dim": 128, "model.decoder_width": 64,
         "model.decoder_depth": 1, "model.decoder_heads": 1, "train.batch_size": 16, "train.warmup_steps": 2,
         "train.base_lr": 2e-3, "log.every_steps": 1, "checkpoint.every_steps": 1000, "eval.every_steps": 0,
         "log.figure_every_steps": 0, "checkpoint.asynchronous": False}


def small_config(data_dir, **overrides):
    config = pretrain_config()
    for key, value in {**SMALL, "data.dir": data_dir, **overrides}.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def pretrain_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("st_mem_config", CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("tiny")


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r["loss"] for r in rows if r["split"] == "train"]


def final_params(workdir):
    return jax.tree.leaves(load_model(os.path.join(workdir, "model"))[1])


def summary_of(stdout):
    (line,) = [line for line in stdout.splitlines() if line.startswith("summary: ")]
    return json.loads(line[len("summary: "):])


def run_cli(workdir, data_dir, devices=1, extra=(), **overrides):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    flags = [f"--config.{k}={v}" for k, v in {**SMALL, "data.dir": data_dir, **overrides}.items()]
    result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "pretrain", f"--config={CONFIG}:tiny",
                             f"--workdir={workdir}", *flags, *extra], env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_tiny_run_lowers_the_loss_and_writes_everything(synthetic_shards, tmp_path):
    workdir = str(tmp_path / "run")
    config = small_config(synthetic_shards, **{"train.num_steps": 40, "log.every_steps": 10,
                                               "eval.every_steps": 20, "log.figure_every_steps": 40})
    summary = pretrain.train(config, workdir)
    assert summary["step"] == 40
    train_losses = losses(workdir)
    assert len(train_losses) == 4 and train_losses[-1] < 0.8 * train_losses[0]
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in rows if r["split"] == "validation"] == [20, 40]
    assert {"lr", "grad_norm", "examples_per_s"} <= set(rows[1])
    assert os.path.exists(os.path.join(workdir, "figures", "reconstruction_0000040.png"))
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    assert os.listdir(os.path.join(workdir, "best"))
    encoder, variables = load_model(os.path.join(workdir, "encoder"))
    assert type(encoder).__name__ == "STMEMClassifier" and encoder.width == 64
    assert variables["params"]["encoder"]["pos_embedding"].shape == (32, 64)


@pytest.mark.slow
def test_accumulated_micro_batches_equal_one_big_batch():
    model = create_model("st_mem", "tiny", depth=1, decoder_depth=1)
    params = model.init({"params": jax.random.key(0), "masking": jax.random.key(0)}, jnp.zeros((1, 12, 2250)))["params"]
    tx = optax.sgd(1.0)  # parameter change = gradient, compared directly
    state = loop.TrainState.create(params, tx)
    series = jax.random.normal(jax.random.key(1), (8, 12, 2250))
    key = jax.random.key(2)
    leads = tuple(range(12))
    method = methods.get("st_mem")
    one, m1 = jax.jit(steps.pretrain_step(method, model, tx, 1, leads, 10))(state, series, key)
    four, m4 = jax.jit(steps.pretrain_step(method, model, tx, 4, leads, 10))(state, series, key)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b, p in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), jax.tree.leaves(params)):
        grad_one, grad_four = np.asarray(p - a), np.asarray(p - b)
        np.testing.assert_allclose(grad_four, grad_one, rtol=1e-4, atol=1e-4 * np.abs(grad_one).max() + 1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("on", ["kernels", "all"])
def test_weight_decay_applies_to_kernels_or_to_every_parameter(on):
    from stmem_jax.train.config import pretraining
    from stmem_jax.train.optim import decay_mask, from_config

    model = create_model("st_mem", "tiny", depth=1, decoder_depth=1)
    params = model.init({"params": jax.random.key(0), "masking": jax.random.key(0)}, jnp.zeros((1, 12, 2250)))["params"]
    params = jax.tree.map(lambda p: p + 1.0, params)  # no zero parameter: decay shows everywhere
    train = pretraining("tiny").train
    train.update(weight_decay=0.01, weight_decay_on=on)
    tx = from_config(train, optax.constant_schedule(0.1), params)
    zero = jax.tree.map(jnp.zeros_like, params)  # no gradient: the update is the decay alone
    updates, _ = tx.update(zero, tx.init(params), params)
    flat = {"/".join(k.key for k in path): (np.asarray(u), np.asarray(p)) for (path, u), p in
            zip(jax.tree_util.tree_leaves_with_path(updates), jax.tree.leaves(params))}
    for name, (update, param) in flat.items():
        decayed = on == "all" or name.endswith("kernel")
        np.testing.assert_allclose(update, -0.1 * 0.01 * param if decayed else 0.0, rtol=1e-6, err_msg=name)
    assert any(n.endswith("scale") for n in flat) and any("lead_embedding" in n or "sep" in n for n in flat)
    # frozen normalisation statistics (CPC's exported BatchNorms) never decay
    stats = {"norm": {"mean": jnp.ones(3), "var": jnp.ones(3), "scale": jnp.ones(3)}}
    assert decay_mask(stats, on) == {"norm": {"mean": False, "var": False, "scale": on == "all"}}
    with pytest.raises(ValueError, match="weight_decay_on must be one of"):
        train.weight_decay_on = "biases"
        from_config(train, optax.constant_schedule(0.1), params)


def test_non_finite_guard_keeps_parameters_and_names_the_step(synthetic_shards, tmp_path, monkeypatch):
    model = create_model("st_mem", "tiny", depth=1, decoder_depth=1)
    params = model.init({"params": jax.random.key(0), "masking": jax.random.key(0)}, jnp.zeros((1, 12, 2250)))["params"]
    tx = adamw(optax.constant_schedule(1e-3), params)
    state = loop.TrainState.create(params, tx).replace(step=jnp.full((), 4, jnp.int32))
    poisoned = jnp.ones((2, 12, 2250)).at[0, 3, 100].set(jnp.nan)
    new, _ = jax.jit(steps.pretrain_step(methods.get("st_mem"), model, tx, 1, tuple(range(12)), 10))(
        state, poisoned, jax.random.key(0))
    assert int(new.bad_step) == 4 and int(new.step) == 5
    for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)

    real = pretrain.global_batches

    def poisoning(config, mesh, **kwargs):
        for i, batch in enumerate(real(config, mesh, **kwargs), start=kwargs.get("start_step", 0)):
            if i == 5:  # the 6th step's batch
                batch = {**batch, "series": batch["series"] * jnp.nan}
            yield batch

    monkeypatch.setattr(pretrain, "global_batches", poisoning)
    workdir = str(tmp_path / "run")
    with pytest.raises(loop.NonFiniteLoss, match="at step 6"):
        pretrain.train(small_config(synthetic_shards, **{"train.num_steps": 12, "checkpoint.every_steps": 4}), workdir)
    assert sorted(n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()) == ["4"]


@pytest.mark.slow
def test_killed_run_over_a_mixture_resumed_equals_uninterrupted_run(synthetic_shards, tmp_path):
    other = write_dataset(tmp_path / "other", num_records=40, tasks={}, splits={"train": 1.0}, seed=3,
                          recipe="authors")
    mixture = {"data.dir": f"{synthetic_shards},{other}", "data.weights": "3,1", "train.num_steps": 8}
    full = str(tmp_path / "full")
    pretrain.train(small_config(synthetic_shards, **mixture), full)
    parts = str(tmp_path / "parts")
    first = pretrain.train(small_config(synthetic_shards, **mixture, **{"train.max_steps_per_run": 4}), parts)
    assert first["step"] == 4 and not os.path.exists(os.path.join(parts, "model"))
    with open(os.path.join(parts, "metrics.jsonl"), "a") as f:  # as a run killed after logging step 6 leaves it
        f.write(json.dumps({"step": 6, "split": "train", "loss": 1.0}) + '\n{"step": 7, "spl')
    second = pretrain.train(small_config(synthetic_shards, **mixture), parts)
    assert second["step"] == 8
    np.testing.assert_allclose(losses(parts), losses(full), rtol=1e-6)
    for a, b in zip(final_params(parts), final_params(full)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    rows = [json.loads(line) for line in open(os.path.join(full, "metrics.jsonl")) if '"train"' in line]
    resumed = [json.loads(line) for line in open(os.path.join(parts, "metrics.jsonl")) if '"train"' in line]
    assert [r["step"] for r in resumed] == [r["step"] for r in rows]  # each step once
    with pytest.raises(ValueError, match="checkpoint at step 8, past this run's 6 steps"):
        pretrain.train(small_config(synthetic_shards, **{**mixture, "train.num_steps": 6}), parts)
    drawn = [sum(r[f"drawn/{name}"] for r in rows) for name in ("shards", "other")]
    assert sum(drawn) == 8 * 16 and 0.6 < drawn[0] / sum(drawn) < 0.9  # 3:1 of the 128 examples


@pytest.mark.slow
def test_command_errors_name_the_unknown_field_and_the_missing_folder(tmp_path):
    def command(*flags):
        return subprocess.run([sys.executable, "-m", "stmem_jax.cli", "pretrain", f"--config={CONFIG}:tiny",
                               f"--workdir={tmp_path / 'run'}", *flags], capture_output=True, text=True, timeout=600,
                              cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))

    unknown = command("--config.train.bogus=1")
    assert unknown.returncode == 2 and "config.train.bogus is not a field of the config" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    missing = command(f"--config.data.dir={tmp_path / 'nowhere'}")
    assert missing.returncode == 1 and "nowhere does not exist" in missing.stderr and "Traceback" not in missing.stderr
    # the shipped configs resolve by name from any folder
    for name, code, says in [("mtae_rlm:tiny", 2, "config.train.bogus is not a field"),
                             ("nonesuch:tiny", 2, "config 'nonesuch' is neither a file nor a shipped config")]:
        result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "pretrain", "--config", name,
                                 f"--workdir={tmp_path / 'run'}", "--config.train.bogus=1"], capture_output=True,
                                text=True, timeout=600, cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                                             PYTHONPATH=ROOT))
        assert result.returncode == code and says in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_eight_devices_match_one_and_their_checkpoint_restores_on_one(synthetic_shards, tmp_path):
    one, eight = str(tmp_path / "one"), str(tmp_path / "eight")
    other = write_dataset(tmp_path / "other", num_records=40, tasks={}, splits={"train": 1.0}, seed=3,
                          recipe="authors")
    data = f"{synthetic_shards},{other}"  # a mixture of two folders
    run_cli(one, data, devices=1, **{"train.num_steps": 5})
    run_cli(eight, data, devices=8, **{"train.num_steps": 5, "train.max_steps_per_run": 3})
    run_cli(eight, data, devices=1, **{"train.num_steps": 5})  # resumes on one device
    np.testing.assert_allclose(losses(eight), losses(one), rtol=1e-5, atol=1e-5)
    for a, b in zip(final_params(eight), final_params(one)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_train_together(synthetic_shards, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "multi")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    flags = [f"--config.{k}={v}" for k, v in {**SMALL, "data.dir": synthetic_shards, "train.num_steps": 3,
                                              "distributed.num_processes": 2,
                                              "distributed.coordinator_address": f"127.0.0.1:{port}"}.items()]
    procs = [subprocess.Popen([sys.executable, "-m", "stmem_jax.cli", "pretrain", f"--config={CONFIG}:tiny",
                               f"--workdir={workdir}", *flags, f"--config.distributed.process_id={i}"],
                              env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs[0][1][-3000:] + outputs[1][1][-3000:]
    checksums = [summary_of(out)["local_params_checksum"] for out, _ in outputs]
    assert checksums[0] == checksums[1]
    single = str(tmp_path / "single")
    out = run_cli(single, synthetic_shards, devices=2, **{"train.num_steps": 3}).stdout
    assert summary_of(out)["local_params_checksum"] == pytest.approx(checksums[0], rel=1e-5)


@pytest.mark.slow
def test_command_prepares_synthetic_data_and_a_signal_stops_it_with_a_checkpoint(tmp_path):
    """``stmem-pretrain`` with ``data.dir`` empty prepares the built-in data through ``stmem-prepare
    synthetic``; SIGTERM saves a checkpoint and the command exits with 128 + 15."""
    import signal

    workdir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    flags = [f"--config.{k}={v}" for k, v in {**SMALL, "data.synthetic_records": 120, "data.workers": 1,
                                              "train.num_steps": 100000}.items()]
    proc = subprocess.Popen([sys.executable, "-m", "stmem_jax.cli", "pretrain", "--config", "st_mem:tiny",
                             f"--workdir={workdir}", *flags], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("step 3/"):
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by signal 15" in err and "summary:" not in out
    assert os.path.isfile(workdir / "data" / "shards" / "manifest.json")
    saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
    assert len(saved) == 1 and saved[0] >= 3 and not os.path.exists(workdir / "model")
