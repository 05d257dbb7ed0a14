"""Mistaken runs and untrusted model files: a workdir resumed or rerun as another run, checksums that
cannot verify, model files that ask for huge memory, describe no model or name code to run, and
configs that make no sense (the common fields and every method's own). Each ends in one line naming
the problem (exit status 1; a config that makes no sense: 2, before anything is built or written)
and touches nothing already written."""

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import zipfile

import jax
import pytest

from test_pretrain import CONFIG, ROOT, SMALL, small_config

from stmem_jax.train import pretrain


def tree_state(root):
    """Every file under ``root`` with its size and modification time: what a run may not touch."""
    return {os.path.join(d, f): (os.stat(os.path.join(d, f)).st_size, os.stat(os.path.join(d, f)).st_mtime_ns)
            for d, _, files in os.walk(root) for f in files}


def command(name, config, *args, workdir, data_dir, small=True):
    """``stmem-<name> --config=<config>`` with ``args`` after the small model's flags (a later flag wins)."""
    flags = [f"--config.{k}={v}" for k, v in {**(SMALL if small else {}), "data.dir": data_dir}.items()]
    return subprocess.run([sys.executable, "-m", "stmem_jax.cli", name, f"--config={config}", f"--workdir={workdir}",
                           *flags, *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))


def one_line_error(result, *says, status=1):
    assert result.returncode == status, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "WARNING" not in line
             and not line.startswith(("I0000", "E0000", "W0000"))]
    assert len(lines) == 1 and lines[0].startswith("stmem-"), result.stderr[-3000:]
    for text in says:
        assert text in lines[0], lines[0]


@pytest.fixture(scope="module")
def finished(synthetic_shards, tmp_path_factory):
    """A finished tiny pre-training (width 64) with checkpoints at steps 1 and 2."""
    workdir = str(tmp_path_factory.mktemp("finished") / "run")
    pretrain.train(small_config(synthetic_shards, **{"train.num_steps": 2, "checkpoint.every_steps": 1}), workdir)
    return workdir


@pytest.mark.slow
def test_resuming_a_workdir_with_another_model_names_the_fields_and_touches_nothing(finished, synthetic_shards):
    before = tree_state(finished)
    for flags, says in [(["--config.model.width=128"], "model.width (64 -> 128)"),
                        (["--config.model.lead_indicators=none", "--config.train.num_steps=4"],
                         "model.lead_indicators ('both' -> 'none')")]:
        result = command("pretrain", f"{CONFIG}:tiny", *flags, workdir=finished, data_dir=synthetic_shards)
        one_line_error(result, "holds checkpoints of another run", says, "Use another workdir")
        assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    assert tree_state(finished) == before  # no checkpoint moved aside, no model, encoder or config.json rewritten


@pytest.mark.slow
def test_checksums_that_cannot_verify_stop_the_resume_and_a_step_without_one_is_damage(synthetic_shards, tmp_path):
    workdir = str(tmp_path / "run")
    config = small_config(synthetic_shards, **{"train.num_steps": 4, "checkpoint.every_steps": 1,
                                               "checkpoint.keep": 3, "train.max_steps_per_run": 2})
    pretrain.train(config, workdir)
    table_path = os.path.join(workdir, "checkpoints", "checksums.json")
    table = open(table_path).read()
    with open(table_path, "w") as f:
        f.write(table[: len(table) // 2])  # cut: unreadable
    before = tree_state(workdir)
    with pytest.raises(ValueError, match="checksums.json cannot be read .* delete it to resume without verification"):
        pretrain.train(config, workdir)
    assert tree_state(workdir) == before
    entries = json.loads(table)
    del entries["2"]  # the newest step has no checksum: damaged, the run goes back to step 1
    with open(table_path, "w") as f:
        json.dump(entries, f)
    assert pretrain.train(config, workdir)["step"] == 3
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "broken-2"))
    os.remove(table_path)  # checkpoints from before checksums existed: restored unverified, with a warning
    config.train.max_steps_per_run = 0
    assert pretrain.train(config, workdir)["step"] == 4


def test_model_files_that_ask_for_huge_memory_or_describe_no_model_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    from stmem_jax import api
    from stmem_jax.cli import convert
    from stmem_jax.convert import load_torch_checkpoint, state_dict_from_variables
    from stmem_jax.model_dir import save_model
    from stmem_jax.models import create_model, init_variables

    model = create_model("st_mem_classifier", "tiny", depth=1)
    variables = init_variables(model, jax.random.key(0))
    tensors = {k: torch.from_numpy(v) for k, v in state_dict_from_variables(model, variables).items()}
    # a tensor that repeats one stored number (stride 0): the file declares far more than it holds
    crafted = dict(tensors, **{"to_patch_embedding.2.weight": torch.zeros(1).expand(32000, 75)})
    torch.save({"model": crafted}, tmp_path / "crafted.pth")
    assert os.path.getsize(tmp_path / "crafted.pth") < 32000 * 75 * 4 / 10
    with pytest.raises(ValueError, match="not stored whole in the file"):
        load_torch_checkpoint(tmp_path / "crafted.pth")
    with pytest.raises(ValueError, match="crafted.pth"):
        api.load_encoder(str(tmp_path / "crafted.pth"))

    save_model(tmp_path / "good", model, variables)
    description = json.loads((tmp_path / "good" / "model.json").read_text())
    for name, change, says in [
            ("huge", {"width": 32000, "mlp_dim": 128000, "depth": 48}, "larger than this package builds"),
            ("unknown_field", {"colour": "red"}, "has no field(s) ['colour']"),
            ("zero_patch", {"patch_size": 0}, "patch_size must be a whole number >= 1"),
            ("unknown_kind", {"kind": "resnet"}, "unknown model kind 'resnet'")]:
        bad = tmp_path / name
        os.makedirs(bad)
        (bad / "model.json").write_text(json.dumps({**description, "model": {**description["model"], **change}}))
        with pytest.raises(ValueError, match="model.json: not a model description"):
            api.load_encoder(str(bad))
        assert convert(["export", str(bad), str(tmp_path / f"{name}.pth")]) == 1
        assert not os.path.exists(tmp_path / f"{name}.pth")
    (tmp_path / "unknown_kind" / "model.json").write_bytes(os.urandom(64))
    with pytest.raises(ValueError, match="model.json: not a model description"):
        api.load_encoder(str(tmp_path / "unknown_kind"))


@pytest.mark.slow
def test_configs_that_make_no_sense_are_refused_naming_every_field(synthetic_shards, tmp_path):
    result = command("pretrain", f"{CONFIG}:tiny", "--config.train.lr=-0.001", "--config.model.mask_ratio=0",
                     "--config.checkpoint.keep=0", workdir=str(tmp_path / "run"), data_dir=synthetic_shards)
    one_line_error(result, "train.lr=-0.001", "model.mask_ratio=0.0", "checkpoint.keep=0", status=2)
    result = command("finetune", "ptbxl:rhythm", "--config.mode=scratch",
                     "--config.train.num_steps=0", "--config.train.epochs=0", "--config.data.label_fraction=1.5",
                     workdir=str(tmp_path / "ft"), data_dir=synthetic_shards, small=False)
    one_line_error(result, "data.label_fraction=1.5", status=2)
    # a method's own fields, and its checks across fields, the same way (the built-in synthetic data: none prepared)
    result = command("pretrain", "cpc:tiny", "--config.model.horizon=2000", "--config.data.dir=",
                     workdir=str(tmp_path / "cpc"), data_dir=synthetic_shards, small=False)
    one_line_error(result, "model.horizon=2000 leaves nothing to predict", "data.crop_samples=1000", status=2)
    assert not [name for name in ("run", "ft", "cpc") if os.path.exists(tmp_path / name)]  # nothing written


def bad_values(bounds):
    """Values just outside ``bounds`` (a ``RANGES`` entry), below and above."""
    low, high, low_allowed, high_allowed = (*bounds, True)[:4]
    return [low - 1 if low_allowed else low] + ([] if high is None else [high + 1 if high_allowed else high])


def method_cases():
    """(method, field, value) for every field every registered method declares a range of, and a
    method of one's own (``tests.toy_method``), each just outside its range."""
    import tests.toy_method  # noqa: F401  (registers it)
    from stmem_jax import methods

    return [(name, field, value) for name in methods.names() for field, bounds in methods.get(name).ranges().items()
            for value in bad_values(bounds)]


def test_every_method_field_outside_its_range_is_one_line_and_exit_2_before_anything_is_built(capsys):
    from stmem_jax import methods
    from stmem_jax.cli import check_config
    from stmem_jax.train.config import pretraining

    cases = method_cases()
    assert {name for name, _, _ in cases} == set(methods.names())  # each declares ranges (the toy's too)
    assert ("tests.toy_method", "average_momentum", 2) in cases  # a method of one's own: its field's range too
    for name in methods.names():  # every number a method adds has a range
        fields = methods.get(name).config()
        numbers = {k for k in fields if fields.get_type(k) in (int, float)}
        assert numbers <= set(methods.get(name).ranges()), (name, numbers - set(methods.get(name).ranges()))
    for name, field, value in cases:
        config = pretraining("tiny", name)
        assert check_config("stmem-pretrain", config) == 0, capsys.readouterr().err
        config.model[field] = value
        assert check_config("stmem-pretrain", config) == 2, (name, field, value)
        (line,) = capsys.readouterr().err.splitlines()
        assert line.startswith("stmem-pretrain: error: the config makes no sense: ") and \
            f"model.{field}={config.model[field]} is outside " in line, line


@pytest.mark.parametrize("method, fields, says", [
    ("moco_v3", {"train.batch_size": 1}, "train.batch_size=1 gives MoCo v3's loss no negative"),
    ("cmsc", {"eval.batch_size": 1}, "eval.batch_size=1 gives CMSC's loss no negative"),
    ("cmsc", {"data.segment_samples": 1000}, "data.segment_samples=1000 does not fit the crop: a segment is whole "
                                             "75-sample patches, at most data.crop_samples=2250"),
    ("cmsc", {"data.segment_samples": 2400}, "data.segment_samples=2400 does not fit the crop"),
    ("cpc", {"model.horizon": 2250}, "model.horizon=2250 leaves nothing to predict in a latent sequence of "
                                     "data.crop_samples=2250 steps"),
    ("cpc", {"data.crop_samples": 10}, "model.horizon=12 leaves nothing to predict"),
    ("cpc", {"model.negatives": 5000}, "model.negatives=5000 is more than the 2249 other steps"),
    ("cpc", {"model.encoder_layers": 0, "model.horizon": -3, "model.width": 0, "model.depth": 0},
     "model.width=0 is outside [1, inf); model.depth=0 is outside [1, inf); model.encoder_layers=0 is outside "
     "[1, inf); model.horizon=-3 is outside [1, inf)"),  # CPC's widths with its own fields
    ("cmsc", {"model.positives": "both"}, "model.positives='both' is not one of clocs, fairseq"),
    ("st_mem", {"model.lead_indicators": "neither"}, "model.lead_indicators='neither' is not one of both, lead"),
    ("st_mem", {"model.preset": "huge"}, "model.preset='huge' is not one of tiny, vit_small, vit_base"),
])
def test_what_makes_no_sense_across_fields_is_refused_the_same_way(method, fields, says, capsys):
    from stmem_jax.cli import check_config
    from stmem_jax.train.config import pretraining

    config = pretraining("tiny", method)
    for key, value in fields.items():
        section, name = key.split(".")
        config[section][name] = value
    assert check_config("stmem-pretrain", config) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("stmem-pretrain: error: the config makes no sense: ") and says in line, line


def test_a_full_disk_is_one_line_and_a_bug_says_it_is_one(synthetic_shards, tmp_path, monkeypatch, capsys):
    import errno

    from stmem_jax.cli import guarded
    from stmem_jax.train import checkpoints

    def full(self, step, state):
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(self.workdir, "checkpoints", str(step)))

    monkeypatch.setattr(checkpoints.Checkpoints, "save", full)
    config = small_config(synthetic_shards, **{"train.num_steps": 2})
    assert guarded("stmem-pretrain", lambda: pretrain.train(config, str(tmp_path / "run"))) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stmem-pretrain: error: [Errno 28] No space left on device") and "Traceback" not in err
    assert guarded("stmem-pretrain", lambda: 1 / 0) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "internal error: a bug in stmem-jax" in err


def test_resuming_a_linear_probe_of_another_encoder_of_the_same_width_is_refused(synthetic_shards, tmp_path):
    """The head's state keeps its shapes, but the run is another one: ``init`` names which run a workdir holds."""
    from stmem_jax.train import downstream
    from stmem_jax.train.config import downstream as downstream_config

    config = downstream_config()
    for key, value in {"mode": "linprobe", "init": "random:st_mem", "model.preset": "tiny", "model.width": 64,
                       "model.depth": 1, "model.heads": 1, "model.mlp_dim": 128, "data.dir": synthetic_shards,
                       "data.task": "rhythm", "train.num_steps": 4, "train.batch_size": 16,
                       "checkpoint.asynchronous": False}.items():
        section, _, field = key.rpartition(".")
        (config[section] if section else config)[field] = value
    workdir = str(tmp_path / "probe")
    downstream.train(config, workdir)
    os.remove(os.path.join(workdir, downstream.METRICS_FILE))  # as a run killed after its last checkpoint leaves it
    before = tree_state(workdir)
    config.init = "random:mtae"  # a head of the same shape on another encoder
    with pytest.raises(ValueError, match=r"checkpoints of another run .*init \('random:st_mem' -> 'random:mtae'\)"):
        downstream.train(config, workdir)
    assert tree_state(workdir) == before


def md5_tree(root):
    """``{path: md5}`` of every file under ``root``: what a refused run may not touch."""
    return {os.path.join(d, f): hashlib.md5(open(os.path.join(d, f), "rb").read()).hexdigest()
            for d, _, files in os.walk(root) for f in files}


def payload_folder(parent, kind):
    """``<parent>/evilmdl``: a model.json whose kind names ``evilmdl.payload`` beside it, and the path of the
    file that module writes when it runs."""
    folder = parent / "evilmdl"
    folder.mkdir(exist_ok=True)
    ran = parent / "payload-ran"
    (folder / "payload.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\nx = None\n")
    (folder / "model.json").write_text(json.dumps({"model": {"kind": kind, "seq_len": 2250}, "metadata": {}}))
    return ran


def test_a_model_folder_never_runs_code_and_a_crafted_kind_names_the_file_and_field(tmp_path, monkeypatch):
    from stmem_jax import api

    monkeypatch.chdir(tmp_path)  # as `python -m ...` run from the folder's parent: the current folder is on the path
    monkeypatch.syspath_prepend(str(tmp_path))
    for kind in ("evilmdl.payload:x", "evilmdl.payload", "__import__('os')"):
        ran = payload_folder(tmp_path, kind)
        with pytest.raises(ValueError, match=re.escape(f"evilmdl/model.json: not a model description (field 'kind': "
                                                       f"unknown model kind {kind!r}")):
            api.load_encoder("evilmdl")
        assert not ran.exists() and not [m for m in sys.modules if m.startswith("evilmdl")]


@pytest.mark.slow
def test_finetuning_from_a_model_folder_that_names_a_module_runs_no_code(synthetic_shards, tmp_path):
    ran = payload_folder(tmp_path, "evilmdl.payload:x")
    result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "finetune", "--config=ptbxl:rhythm",
                             "--config.init=evilmdl", f"--config.data.dir={synthetic_shards}",
                             f"--workdir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=600,
                            cwd=tmp_path, env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))
    one_line_error(result, "evilmdl/model.json", "field 'kind'", "unknown model kind 'evilmdl.payload:x'")
    assert not ran.exists() and not os.path.exists(tmp_path / "run" / "config.json")


def pth_bomb(path, tensors, uncompressed):
    """``tensors`` saved by torch, plus a tensor ``bomb`` of ``uncompressed`` bytes of zeros stored
    deflate-compressed (a few MB on disk)."""
    torch = pytest.importorskip("torch")
    mark = 123457  # the bomb's length as torch pickles it, then rewritten
    torch.save({"model": dict(tensors, bomb=torch.zeros(mark))}, path)
    with zipfile.ZipFile(path) as archive:
        entries = [(info.filename, archive.read(info.filename)) for info in archive.infolist()]
    length = b"J" + struct.pack("<i", uncompressed // 4)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries:
            if name.endswith("/data.pkl"):
                assert data.count(b"J" + struct.pack("<i", mark)) == 2  # the storage's length and the tensor's
                archive.writestr(name, data.replace(b"J" + struct.pack("<i", mark), length))
            elif len(data) == mark * 4:
                info = zipfile.ZipInfo(name)
                info.compress_type, info._compresslevel = zipfile.ZIP_DEFLATED, 1
                with archive.open(info, "w", force_zip64=True) as f:
                    for _ in range(uncompressed >> 24):
                        f.write(bytes(1 << 24))
            else:
                archive.writestr(name, data)


@pytest.mark.slow
def test_a_compressed_pth_bomb_is_refused_before_any_tensor_is_read(tmp_path):
    torch = pytest.importorskip("torch")
    from stmem_jax.convert import state_dict_from_variables
    from stmem_jax.models import create_model, init_variables

    model = create_model("st_mem_classifier", "tiny", depth=1)
    tensors = {k: torch.from_numpy(v) for k, v in
               state_dict_from_variables(model, init_variables(model, jax.random.key(0))).items()}
    path = tmp_path / "bomb.pth"
    pth_bomb(path, tensors, 1 << 30)  # 1 GiB of zeros
    assert os.path.getsize(path) < 10 << 20
    # the peak resident memory of the process, KiB (VmHWM: its own; ru_maxrss would carry this test's over the exec)
    code = ("import re, sys\nfrom stmem_jax.convert import load_torch_checkpoint\n"
            "try:\n    load_torch_checkpoint(sys.argv[1])\nexcept ValueError as error:\n    print(error)\n"
            "print(re.search(r'VmHWM:\\s*(\\d+) kB', open('/proc/self/status').read())[1])")
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=600,
                            cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-3000:]
    message, peak = result.stdout.strip().splitlines()[-2:]
    assert message.startswith(f"{path}: its entries declare 1,07") and "more than the STMEMClassifier" in message
    assert int(peak) * 1024 < 1e9


@pytest.mark.slow
def test_an_mtae_run_resumed_or_rerun_as_mtae_rlm_is_refused_and_touches_nothing(synthetic_shards, tmp_path):
    from stmem_jax.train.config import load_config

    def config(name, **overrides):
        c = load_config(name, "tiny")
        for key, value in {**SMALL, "data.dir": synthetic_shards, "train.num_steps": 2, "checkpoint.every_steps": 1,
                           **overrides}.items():
            section, field = key.split(".")
            c[section][field] = value
        return c

    workdir = str(tmp_path / "run")
    assert pretrain.train(config("mtae", **{"train.max_steps_per_run": 1}), workdir)["step"] == 1  # unfinished
    for finished in (False, True):
        before = md5_tree(workdir)
        with pytest.raises(ValueError, match=re.escape("holds checkpoints of another run (changed from its "
                                                       "config.json: data.lead_masking (0.0 -> 0.5))")) as error:
            pretrain.train(config("mtae_rlm"), workdir)
        assert "\n" not in str(error.value)
        assert md5_tree(workdir) == before  # config.json, checkpoints, model/, encoder/ as they were
        if not finished:
            assert pretrain.train(config("mtae"), workdir)["step"] == 2  # its own settings finish it
