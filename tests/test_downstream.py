import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from stmem_jax import embed, grid, infer, predict
from stmem_jax.model_dir import load_model, save_model
from stmem_jax.data.pipeline import InputConfig, make_dataset
from stmem_jax import methods
from stmem_jax.models import create_model, init_variables
from stmem_jax.core.leads import parse_leads
from stmem_jax.core.recipe import AUTHORS
from stmem_jax.data.tasks import resolve_task
from stmem_jax.train import checkpoints, downstream, linprobe, loop
from stmem_jax.train.config import downstream as downstream_config, load_config
from stmem_jax.mesh import make_mesh, replicated

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "downstream")
SIZES = dict(width=64, depth=2, heads=1, mlp_dim=128)
# a tiny model, no augmentation or drop-path, a high learning rate: learns the synthetic rhythm in 60 steps
SMALL = {"model.preset": "tiny", **{f"model.{k}": v for k, v in SIZES.items()}, "model.drop_path": 0.0,
         "data.augment": False, "train.batch_size": 16, "train.warmup_steps": 5, "train.lr": 6e-3,
         "eval.batch_size": 16, "log.every_steps": 20, "checkpoint.asynchronous": False}


def run_config(data_dir, task="rhythm", **overrides):
    config = downstream_config()
    for key, value in {**SMALL, "data.dir": data_dir, "data.task": task, **overrides}.items():
        *path, field = key.split(".")
        section = config
        for name in path:
            section = section[name]
        section[field] = value
    return config


def split_ids(data_dir, split="test", task="rhythm"):
    ds = make_dataset(InputConfig(data_dir, split=split, batch_size=16, training=False, task=task),
                      process_index=0, process_count=1)
    return sorted(r.decode() for b in ds.as_numpy_iterator() for r, v in zip(b["record_id"], b["valid"]) if v)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A (randomly initialised) pre-training workdir as stmem-pretrain leaves it: model/ and encoder/,
    each recording the authors' recipe as its input."""
    workdir = tmp_path_factory.mktemp("pretrain")
    model = create_model("st_mem", "tiny", **SIZES, decoder_width=64, decoder_depth=1, decoder_heads=1)
    variables = init_variables(model, jax.random.key(0))
    metadata = {"recipe": dataclasses.replace(AUTHORS, crop_samples=model.seq_len).to_dict()}
    save_model(workdir / "model", model, variables, metadata=metadata)
    save_model(workdir / "encoder", *methods.get("st_mem").encoder(model, variables), metadata=metadata)
    return str(workdir)


@pytest.fixture(scope="module")
def finetuned(synthetic_shards, pretrained, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("finetune") / "run")
    config = run_config(synthetic_shards, mode="finetune", init=pretrained,
                        **{"train.num_steps": 60, "eval.every_steps": 30, "model.drop_path": 0.1})
    return workdir, downstream.train(config, workdir)


@pytest.mark.slow
def test_finetune_learns_the_rhythm_and_writes_its_results(finetuned, synthetic_shards):
    workdir, record = finetuned
    assert record["multilabel"] and record["classes"] == ["AFIB", "SR"]
    assert record["test"]["auroc"] > 0.75, record["test"]
    assert record["selected_step"] in (30, 60) and record["select"] == "loss"
    assert json.load(open(os.path.join(workdir, "test_metrics.json"))) == record
    header, row = open(os.path.join(workdir, "test_metrics.csv")).read().splitlines()
    assert header.split(",")[:7] == ["task", "mode", "leads", "label_fraction", "seed", "selected_step", "num_examples"]
    predictions = np.load(os.path.join(workdir, "test_predictions.npz"))
    assert sorted(predictions["record_id"]) == split_ids(synthetic_shards)
    model, variables = load_model(os.path.join(workdir, "model"))
    assert model.num_classes == 2 and model.drop_path == 0.1
    # a finished run is not trained again; asked for with other settings, it says which and keeps its results
    config = run_config(synthetic_shards, mode="finetune", init=record["init"],
                        **{"train.num_steps": 60, "eval.every_steps": 30, "model.drop_path": 0.1})
    assert downstream.train(config, workdir) == record
    config.model.drop_path = 0.2
    with pytest.raises(ValueError, match=r"finished run with other settings .*model.drop_path \(0.1 -> 0.2\)"):
        downstream.train(config, workdir)
    assert json.load(open(os.path.join(workdir, "test_metrics.json"))) == record


@pytest.mark.slow
def test_run_killed_after_an_evaluation_resumes_to_the_same_result(finetuned, pretrained, synthetic_shards,
                                                                      tmp_path, monkeypatch):
    """Killed after keeping its best state (step 30) but before its first periodic checkpoint (40):
    the rerun replays from step 0 and ends as the uninterrupted run (the ``finetuned`` fixture) did."""
    workdir = str(tmp_path / "run")
    config = run_config(synthetic_shards, mode="finetune", init=pretrained,
                        **{"train.num_steps": 60, "eval.every_steps": 30, "model.drop_path": 0.1,
                           "checkpoint.every_steps": 40})

    def killed(self, step, state):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(checkpoints.Checkpoints, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            downstream.train(config, workdir)
    assert [n for n in os.listdir(os.path.join(workdir, "best")) if n.isdigit()] == ["30"]
    record = downstream.train(config, workdir)
    expected = finetuned[1]
    assert record["selected_step"] == expected["selected_step"]
    np.testing.assert_allclose(record["test"]["auroc"], expected["test"]["auroc"], atol=1e-6)


@pytest.mark.slow
def test_scratch_learns_a_single_label_task_and_reports_absent_classes(synthetic_shards, tmp_path):
    config = run_config(synthetic_shards, "st_mem", mode="scratch", **{"train.num_steps": 60, "eval.select": "auroc"})
    record = downstream.train(config, str(tmp_path / "run"))
    test = record["test"]
    assert test["auroc"] > 0.7, test
    assert test["absent_classes"] == ["MI"] and test["per_class_auroc"]["MI"] is None  # no MI in the test split
    assert {"f1", "accuracy"} <= set(test) and record["select"] == "auroc"
    model, variables = load_model(str(tmp_path / "run" / "model"))
    assert model.num_classes == 5


@pytest.mark.slow
def test_linear_probe_on_cached_features_keeps_the_encoder_and_caches_features(finetuned, synthetic_shards, tmp_path, monkeypatch):
    init = finetuned[0]  # a downstream workdir: its classifier's head is replaced
    config = run_config(synthetic_shards, mode="linprobe", init=init, **{"train.num_steps": 100, "train.lr": 0.02,
                                                                       "train.linprobe": "cached_features"})
    record = downstream.train(config, str(tmp_path / "first"))
    assert record["test"]["auroc"] > 0.75, record["test"]
    _, before = infer.load_encoder(init)
    _, after = load_model(str(tmp_path / "first" / "model"))
    leaves = jax.tree.leaves(before["params"]["encoder"])
    assert len(leaves) == len(jax.tree.leaves(after["params"]["encoder"]))
    for a, b in zip(leaves, jax.tree.leaves(after["params"]["encoder"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    cache = sorted(os.listdir(tmp_path / "first" / "features"))
    assert [name.split("-")[0] for name in cache] == ["test", "train", "validation"]
    # the test predictions come from cached features: they are the saved classifier's on the test split
    model, variables = load_model(str(tmp_path / "first" / "model"))
    task = resolve_task(synthetic_shards, config.data.task, config.data.leads)
    mesh = make_mesh(1)
    direct = infer.predict(infer.probabilities_fn(model, task.lead_ids, task.multilabel),
                           jax.device_put(variables["params"], replicated(mesh)),
                           task.input(config, "test", False, config.eval.batch_size), mesh)
    saved = np.load(tmp_path / "first" / "test_predictions.npz")
    np.testing.assert_array_equal(saved["record_id"], direct["record_id"])
    np.testing.assert_allclose(saved["probs"], direct["outputs"], atol=1e-5)

    original, calls = infer.predict, []

    def counting(fn, params, input_config, mesh):
        calls.append(input_config.split)
        return original(fn, params, input_config, mesh)

    monkeypatch.setattr(infer, "predict", counting)
    config.data.feature_cache = str(tmp_path / "first" / "features")
    again = downstream.train(config, str(tmp_path / "second"))
    assert calls == []  # train, validation and test features came from the cache
    assert again["test"] == record["test"]
    # another seed of a label-fraction grid computes only its own training subset's features
    config.train.seed, config.data.label_fraction = 1, 0.5
    downstream.train(config, str(tmp_path / "third"))
    assert calls == ["train"]


@pytest.mark.slow
def test_the_linear_probe_trains_the_head_on_augmented_random_crops_through_the_frozen_encoder(
        pretrained, synthetic_shards, tmp_path, monkeypatch):
    """The authors' linear probe (the default): the fine-tuning loop with the encoder frozen, its inputs
    random crops with RandAugment (a record seen in two epochs meets two different inputs), validated
    every epoch; the encoder leaves it unchanged."""
    seen, real = {}, downstream.global_batches

    def spying(config, mesh, **kwargs):
        for batch in real(config, mesh, **kwargs):
            if config.training:
                for record_id, series in zip(batch["record_id"], np.asarray(batch["series"])):
                    seen.setdefault(record_id, []).append(series)
            yield batch

    monkeypatch.setattr(downstream, "global_batches", spying)
    config = run_config(synthetic_shards, mode="linprobe", init=pretrained, task="st_mem",
                        **{"data.augment": True, "data.label_fraction": 0.2, "train.num_steps": 4})
    record = downstream.train(config, str(tmp_path / "probe"))
    assert seen and {s.shape for v in seen.values() for s in v} == {(12, 2250)}
    twice = [v for v in seen.values() if len(v) == 2]
    assert twice and all(not np.allclose(a, b) for a, b in twice)
    validated = [json.loads(line)["step"] for line in open(tmp_path / "probe" / "metrics.jsonl")
                 if '"validation"' in line]
    assert validated == [2, 4] and record["selected_step"] in validated  # every epoch (2 steps each)
    _, before = infer.load_encoder(pretrained)
    _, after = load_model(str(tmp_path / "probe" / "model"))
    for a, b in zip(jax.tree.leaves(before["params"]["encoder"]), jax.tree.leaves(after["params"]["encoder"])):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_linear_probe_on_cached_features_stopped_by_a_signal_resumes_to_the_same_result(finetuned, synthetic_shards, tmp_path,
                                                                     monkeypatch):
    """SIGTERM at step 46: the probe saves a checkpoint and stops; the rerun resumes there and ends as
    an uninterrupted run does."""
    config = run_config(synthetic_shards, mode="linprobe", init=finetuned[0],
                        **{"train.num_steps": 100, "train.lr": 0.02, "checkpoint.every_steps": 30,
                           "data.feature_cache": str(tmp_path / "features"), "train.linprobe": "cached_features"})
    full = downstream.train(config, str(tmp_path / "full"))
    real = linprobe._feature_batches

    def signalled(*args):
        for step, batch in enumerate(real(*args), start=args[5]):
            if step == 45:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    parts = str(tmp_path / "parts")
    with monkeypatch.context() as patch:
        patch.setattr(linprobe, "_feature_batches", signalled)
        with pytest.raises(loop.Interrupted, match="signal 15 at step 46"):
            downstream.train(config, parts)
    assert "46" in os.listdir(os.path.join(parts, "checkpoints"))
    assert not os.path.exists(os.path.join(parts, downstream.METRICS_FILE))
    resumed = downstream.train(config, parts)
    assert resumed["selected_step"] == full["selected_step"]
    np.testing.assert_allclose(resumed["test"]["auroc"], full["test"]["auroc"], atol=1e-6)
    np.testing.assert_allclose(resumed["validation"]["loss"], full["validation"]["loss"], rtol=1e-5)


@pytest.mark.slow
def test_three_crop_evaluation_is_the_mean_of_single_crop_passes():
    model = create_model("st_mem_classifier", "tiny", **SIZES, num_classes=3)
    params = init_variables(model, jax.random.key(0))["params"]
    series = jax.random.normal(jax.random.key(1), (2, 3, 12, 2250))
    leads = tuple(range(12))
    for multilabel, act in ((False, jax.nn.softmax), (True, jax.nn.sigmoid)):
        averaged = infer.crop_probabilities(infer.crop_outputs(model, params, series, leads), multilabel)
        single = [act(model.apply({"params": params}, series[:, i], leads=leads)) for i in range(3)]
        np.testing.assert_allclose(averaged, np.mean(single, axis=0), rtol=1e-5, atol=1e-6)


def test_encoders_from_every_source(pretrained, tmp_path):
    from stmem_jax.convert import save_torch_checkpoint

    model, variables = load_model(os.path.join(pretrained, "model"))
    public = create_model("st_mem", "tiny", depth=1, decoder_width=128, decoder_heads=2)  # has a public layout
    public_vars = init_variables(public, jax.random.key(1))
    save_torch_checkpoint(str(tmp_path / "st_mem.pth"), public, public_vars)
    for path, model, variables in [(pretrained, model, variables),
                                   (os.path.join(pretrained, "model"), model, variables),
                                   (str(tmp_path / "st_mem.pth"), public, public_vars)]:
        encoder, loaded = infer.load_encoder(path)
        assert encoder.num_classes == 0 and encoder.width == model.width
        for a, b in zip(jax.tree.leaves(methods.get("st_mem").encoder(model, variables)[1]), jax.tree.leaves(loaded)):
            np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_baseline_encoders_take_fewer_leads_zero_filled_and_a_random_encoder_is_a_control(synthetic_shards, tmp_path):
    """MTAE/MLAE encoders see 6 or 1 leads zero-filled at their standard positions; ``init=random:<method>``
    probes that method's encoder at its random initialisation (seeded: the same twice)."""
    mtae = create_model("mtae", "tiny", **SIZES, decoder_width=64, decoder_depth=1, decoder_heads=1)
    save_model(tmp_path / "mtae", mtae, init_variables(mtae, jax.random.key(0)))
    config = run_config(synthetic_shards, mode="linprobe", init=str(tmp_path / "mtae"),
                        **{"train.num_steps": 20, "data.leads": "limb"})
    record = downstream.train(config, str(tmp_path / "limb"))
    assert 0 <= record["test"]["auroc"] <= 1 and record["leads"] == "limb"
    config = run_config(synthetic_shards, mode="scratch", **{"model.kind": "mlae", "data.leads": "II",
                                                             "train.num_steps": 4})
    assert downstream.train(config, str(tmp_path / "lead_ii"))["test"]["num_examples"] == 49

    random = run_config(synthetic_shards, mode="linprobe", init="random:mtae", **{"train.num_steps": 20})
    first = downstream.train(random, str(tmp_path / "random"))
    again = downstream.train(random, str(tmp_path / "random_again"))
    assert first["test"] == again["test"] and first["init"] == "random:mtae"
    encoder, _ = load_model(tmp_path / "random" / "model")
    assert type(encoder).__name__ == "BaselineClassifier" and encoder.width == SIZES["width"]
    with pytest.raises(ValueError, match="unknown method 'nothing'"):
        downstream.train(run_config(synthetic_shards, mode="linprobe", init="random:nothing"), str(tmp_path / "x"))


def test_config_files_set_their_tasks():
    assert load_config(os.path.join(CONFIGS, "ptbxl.py"), "").data.task == "st_mem"  # a file, or a name
    assert load_config("ptbxl", "form").data.task == load_config("ptbxl:form").data.task == "form"
    assert load_config(os.path.join(CONFIGS, "cpsc2018.py"), "multi").data.task == "cpsc2018"
    assert load_config(os.path.join(CONFIGS, "cpsc2018.py"), "single").data.task == "cpsc2018_single"
    af = load_config(os.path.join(CONFIGS, "physionet2017.py"))
    assert (af.data.task, af.data.leads) == ("af2017", "1")
    assert load_config(os.path.join(CONFIGS, "generic.py"), "label").data.task == "label"
    grid = load_config("grid:cpsc2018:multi")
    assert grid.run.data.task == "cpsc2018" and len(grid.grid.seeds) >= 3
    assert parse_leads("I, II,V1") == ("I", "II", "V1") and parse_leads("limb") == "limb"
    with pytest.raises(ValueError, match="needs data.dir"):
        downstream.train(af, "/nonexistent/never/created")


@pytest.mark.slow
def test_eight_devices_score_every_test_example_once(synthetic_shards, tmp_path):
    """The CLI on 8 simulated devices: test examples (49, an odd number) each scored exactly once,
    with the probabilities a one-device evaluation of the saved model gives."""
    workdir = str(tmp_path / "run")
    overrides = {**SMALL, "data.dir": synthetic_shards, "mode": "scratch", "train.num_steps": 3,
                 "train.batch_size": 32, "data.label_fraction": 0.1, "eval.batch_size": 8, "eval.every_steps": 2}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "finetune",
                             f"--config={CONFIGS}/ptbxl.py:st_mem", f"--workdir={workdir}",
                             *[f"--config.{k}={v}" for k, v in overrides.items()]],
                            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 16 instead of 32" in result.stdout  # 10% of the labels: 17 examples
    predictions = np.load(os.path.join(workdir, "test_predictions.npz"))
    ids = list(predictions["record_id"])
    assert len(ids) == 49 and sorted(ids) == split_ids(synthetic_shards, task="st_mem")

    model, variables = load_model(os.path.join(workdir, "model"))
    leads = tuple(range(12))
    fn = jax.jit(lambda p, s: infer.crop_probabilities(infer.crop_outputs(model, p, s, leads), False))
    config = InputConfig(synthetic_shards, split="test", batch_size=16, training=False, task="st_mem")
    single = infer.predict(fn, variables["params"], config, make_mesh())
    assert list(single["record_id"]) == ids
    np.testing.assert_allclose(single["outputs"], predictions["probs"], atol=1e-5)


@pytest.mark.slow
def test_finetune_from_a_pretraining_workdir_on_eight_devices(pretrained, synthetic_shards, tmp_path):
    """The restored encoder (on one device) is placed onto the 8-device mesh."""
    overrides = {**SMALL, "data.dir": synthetic_shards, "mode": "finetune", "init": pretrained,
                 "train.num_steps": 2, "eval.every_steps": 2}
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "finetune",
                             f"--config={CONFIGS}/ptbxl.py:rhythm", f"--workdir={tmp_path / 'run'}",
                             *[f"--config.{k}={v}" for k, v in overrides.items()]],
                            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.load(open(tmp_path / "run" / downstream.METRICS_FILE))
    assert record["selected_step"] == 2 and record["test"]["num_examples"] == 49


@pytest.mark.slow
def test_benchmark_runs_a_grid_and_resumes(pretrained, synthetic_shards, tmp_path):
    config = load_config(os.path.join(CONFIGS, "grid.py"), "ptbxl:rhythm")
    for key, value in {**SMALL, "data.dir": synthetic_shards, "train.num_steps": 20, "train.lr": 0.02}.items():
        section, field = key.split(".")
        config.run[section][field] = value
    config.grid.update(methods=(f"Random={pretrained}",), modes=("linprobe",), fractions=(0.5,), leads=("12",))
    first = grid.run_grid(config, str(tmp_path))
    assert len(first["ran"]) == 3 and not first["skipped"]
    # a larger grid through the command, on 2 devices: the 50% runs are done, the 100% runs are new
    overrides = {**SMALL, "data.dir": synthetic_shards, "train.num_steps": 20, "train.lr": 0.02}
    result = subprocess.run(
        [sys.executable, "-m", "stmem_jax.cli", "benchmark", f"--config={CONFIGS}/grid.py:ptbxl:rhythm",
         f"--workdir={tmp_path}", *(f"--config.run.{k}={v}" for k, v in overrides.items()),
         f"--config.grid.methods=('Random={pretrained}',)", "--config.grid.modes=('linprobe',)",
         "--config.grid.fractions=(0.5,1.0)", "--config.grid.leads=('12',)", "--reference", "paper"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ran 3 run(s), 3 already done" in result.stdout
    text = open(tmp_path / "results.md").read()  # the Table 1 layout, AUROC and F1; rhythm is none of the paper's
    assert text.count("| Method | rhythm 50% | rhythm 100% |") == 2 and "**Linear probe**" in text
    rows = [line for line in text.splitlines() if line.startswith("| Random |")]
    assert len(rows) == 2 and all(r.count("±") == 2 and r.count("(paper n/a)") == 2 for r in rows)
    assert "Lead robustness" not in text and rows[0] in result.stdout
    rows = open(tmp_path / "runs.csv").read().splitlines()
    assert len(rows) == 7 and rows[0].startswith("task,method,mode,leads,label_fraction,seed,auroc,f1")

    # the same grid with other weights under the method's name: its finished runs are not this grid's
    other = tmp_path / "retrained"
    encoder, variables = load_model(os.path.join(pretrained, "encoder"))
    save_model(other / "encoder", encoder, jax.tree.map(lambda x: np.asarray(x) * 1.01, variables))
    before = {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
              for d, _, files in os.walk(tmp_path / "runs") for f in files}
    config.grid.methods = (f"Random={other}",)
    with pytest.raises(ValueError, match=r"3 finished run\(s\) in .* are not this grid's, changed from their "
                                         r"config.json: runs/rhythm/Random-linprobe/leads-12/fraction-0.5/seed-0 "
                                         r"\(init \('.*' -> '.*retrained'\), init_checksum \('\w+' -> '\w+'\)"):
        grid.run_grid(config, str(tmp_path))
    assert before == {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
                      for d, _, files in os.walk(tmp_path / "runs") for f in files}


def test_grid_methods_whose_names_would_share_a_folder_are_refused_before_anything_runs():
    config = load_config(os.path.join(CONFIGS, "grid.py"), "ptbxl:rhythm")
    config.grid.update(methods=("ST MEM=runs/a", "ST_MEM=runs/b"), modes=("linprobe",))
    with pytest.raises(ValueError, match=r"run ST_MEM=runs/b \(linprobe, task rhythm\) and ST MEM=runs/a "
                                         r"\(linprobe, task rhythm\) would share one folder "
                                         r"\(runs/rhythm/ST_MEM-linprobe/"):
        grid.grid_runs(config)
    config.grid.methods = ("ST-MEM=runs/a", "ST-MEM=runs/a")
    with pytest.raises(ValueError, match=r"run ST-MEM=runs/a \(linprobe, task rhythm\) is listed twice"):
        grid.grid_runs(config)


def copy_native_records(synthetic_shards, record_ids, folder):
    """The native WFDB files of prepared records, copied into ``folder``; their file names."""
    native = os.path.join(os.path.dirname(synthetic_shards), "native")
    names = []
    for rid in record_ids:
        for ext in ("hea", "dat"):
            name = f"{int(rid):05d}_hr.{ext}"
            shutil.copy(os.path.join(native, "records500", f"{int(rid) // 1000 * 1000:05d}", name), folder / name)
        names.append(f"{int(rid):05d}_hr.hea")
    return names


def test_embed_a_prepared_split_and_the_same_records_as_files(pretrained, synthetic_shards, tmp_path):
    output = str(tmp_path / "split.npz")
    assert embed.main(["--model", pretrained, "--data", synthetic_shards, "--split", "test", "--task", "st_mem",
                       "--batch-size", "16", "--output", output]) == 0
    split = np.load(output)
    assert split["features"].shape == (49, 64) and list(split["classes"]) == ["CD", "HYP", "MI", "NORM", "STTC"]
    assert len(split["label"]) == 49 and set(split["window"]) == {0}

    chosen = sorted(split["record_id"][:3], key=int)
    names = copy_native_records(synthetic_shards, chosen, tmp_path)
    encoder, variables = infer.load_encoder(pretrained)
    folder, skipped = embed.embed_files(encoder, variables, str(tmp_path), batch_size=2, pattern="*.hea")
    assert list(folder["record_id"]) == names and not skipped
    expected = [split["features"][list(split["record_id"]).index(rid)] for rid in chosen]
    np.testing.assert_allclose(folder["features"], expected, atol=2e-3)


def test_predict_gives_the_finetuned_runs_test_probabilities_for_its_split_and_files(finetuned, synthetic_shards,
                                                                                     tmp_path):
    workdir, _ = finetuned
    saved = np.load(os.path.join(workdir, "test_predictions.npz"))
    output = str(tmp_path / "split.csv")
    assert predict.main(["--model", workdir, "--data", synthetic_shards, "--split", "test", "--output", output]) == 0
    rows = list(csv.reader(open(output)))
    assert rows[0] == ["record_id", "window", *saved["classes"]] and len(rows) == 1 + len(saved["record_id"])
    by_id = {r[0]: np.array(r[2:], float) for r in rows[1:]}
    np.testing.assert_allclose([by_id[r] for r in saved["record_id"]], saved["probs"], atol=1e-5)

    chosen = sorted(saved["record_id"][:3], key=int)
    folder = tmp_path / "files"
    os.makedirs(folder)
    names = copy_native_records(synthetic_shards, chosen, folder)
    output = str(tmp_path / "files.csv")
    assert predict.main(["--model", workdir, "--files", str(folder), "--output", output]) == 0
    rows = list(csv.reader(open(output)))[1:]
    assert [r[0] for r in rows] == names
    np.testing.assert_allclose([np.array(r[2:], float) for r in rows], [by_id[r] for r in chosen], atol=2e-3)


@pytest.mark.slow
def test_scratch_and_the_random_encoder_take_the_architecture_they_are_compared_with(pretrained, synthetic_shards,
                                                                                      tmp_path):
    """Scratch with ``init`` trains that encoder's architecture from random weights (not ViT-B), and
    ``random:<path>`` probes that model's architecture at its method's initialisation; the grid's
    Supervised row uses its first method's encoder."""
    config = run_config(synthetic_shards, mode="scratch", init=pretrained, **{"model.preset": "vit_base",
                                                                              "train.num_steps": 2})
    for key in ("model.width", "model.depth", "model.heads", "model.mlp_dim"):
        section, field = key.split(".")
        config[section][field] = None  # the preset's sizes: ViT-B, unless init says otherwise
    downstream.train(config, str(tmp_path / "scratch"))
    model, variables = load_model(tmp_path / "scratch" / "model")
    encoder, pretrained_vars = infer.load_encoder(pretrained)
    assert (model.width, model.depth) == (encoder.width, encoder.depth) == (64, 2)
    assert not np.allclose(variables["params"]["encoder"]["blocks"]["block_0"]["mlp"]["fc1"]["kernel"],
                           pretrained_vars["params"]["encoder"]["blocks"]["block_0"]["mlp"]["fc1"]["kernel"])

    probe = run_config(synthetic_shards, mode="linprobe", init=f"random:{pretrained}", **{"train.num_steps": 2})
    downstream.train(probe, str(tmp_path / "random"))
    random_model, random_vars = load_model(tmp_path / "random" / "model")
    assert random_model.width == 64 and random_model.depth == 2
    table = random_vars["params"]["encoder"]["pos_embedding"]  # the pre-training init: the sine-cosine table
    np.testing.assert_allclose(table, create_model("st_mem", "tiny", **SIZES).fixed_tables()["pos_embedding"])

    grid_config = load_config("grid:ptbxl:rhythm")
    grid_config.grid.update(methods=(f"ST-MEM={pretrained}",), modes=("scratch",))
    assert {run.init for run in grid.grid_runs(grid_config)} == {pretrained}
