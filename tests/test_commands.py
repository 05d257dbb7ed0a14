"""Every command answers --help (exit status 0) with what a user sets; the config commands list
every field of their config with its default and meaning, without loading TensorFlow."""

import configparser
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def commands():
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(line.replace(" ", "").split("=") for line in lines)


@pytest.mark.parametrize("name", sorted(commands()))
def test_every_command_answers_help(name):
    module, function = commands()[name].split(":")
    code = (f"import sys; sys.argv = [{name!r}, '--help']; import {module} as m; r = m.{function}(); "
            f"sys.exit(r or 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage:") and len(result.stdout.splitlines()) > 5
    if name in ("stmem-pretrain", "stmem-finetune", "stmem-benchmark", "stmem-plan"):
        assert "global, per optimizer step" in result.stdout  # train.batch_size, with its meaning
        assert "oneDNN" not in result.stderr  # TensorFlow's start-up line: not loaded
    if name == "stmem-pretrain":
        assert "--config.model.mask_ratio" in result.stdout and "--config.method" in result.stdout


# what a shipped config names among the valid ones when it refuses an argument (generic takes any task)
VALID = {"st_mem": "vit_base, vit_small, tiny", "mtae": "tiny", "mtae_rlm": "tiny", "mlae": "tiny", "moco_v3": "tiny",
         "cmsc": "tiny", "cpc": "250hz, 100hz, tiny", "ptbxl": "st_mem, all, diagnostic", "cpsc2018": "single or multi",
         "physionet2017": "takes no argument", "grid": "cpsc2018, generic, physionet2017, ptbxl"}


def test_an_unknown_config_or_argument_is_one_line_naming_the_valid_ones(capsys):
    """For every shipped config, on the command line and with --help: exit status 2, no traceback."""
    from stmem_jax import cli
    from stmem_jax.train.config import config_names

    assert set(VALID) == set(config_names()) - {"generic"}
    cases = [*((f"{name}:bogus", valid) for name, valid in VALID.items()), ("grid:ptbxl:bogus", "rhythm"),
             ("bogus:tiny", "neither a file nor a shipped config (cpsc2018, generic, grid")]
    for spec, says in cases:
        for call, args in ((cli.parse_flags, [f"--config={spec}", "--workdir=run"]),
                           (cli.pretrain, ["--config", spec, "--help"])):
            with pytest.raises(SystemExit) as exited:
                call(["stmem-pretrain", *args])
            assert exited.value.code == 2
            out, err = capsys.readouterr()
            assert not out and len(err.splitlines()) == 1, err
            assert err.startswith("stmem-pretrain: error: ") and "'bogus'" in err and says in err, err


LAB = {"raising": 'import os\n\n\ndef connect():\n    raise RuntimeError("the lab server is down")\n\n\nconnect()\n',
       "broken": "def method(:\n    pass\n"}


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A package of the user's own, ``my_lab_i40``, whose modules fail to import."""
    os.makedirs(tmp_path / "my_lab_i40")
    (tmp_path / "my_lab_i40" / "__init__.py").write_text("")
    for name, source in LAB.items():
        (tmp_path / "my_lab_i40" / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [n for n in sys.modules if n.startswith("my_lab_i40")]:
        del sys.modules[name]


def test_a_method_module_of_ones_own_that_fails_to_import_is_named_with_its_own_traceback(lab, capsys):
    from stmem_jax import models
    from stmem_jax.cli import check_config
    from stmem_jax.train.config import pretraining

    config = pretraining("tiny")
    for module, own, error in [
            ("raising", ['raising.py", line 8, in <module>', "    connect()", 'raising.py", line 5, in connect',
                         '    raise RuntimeError("the lab server is down")'], "RuntimeError: the lab server is down"),
            ("broken", ['broken.py", line 1', "    def method(:", "^"], "SyntaxError: invalid syntax"),
            ("missing", [], "ModuleNotFoundError: No module named 'my_lab_i40.missing'")]:
        config.method = f"my_lab_i40.{module}"
        assert check_config("stmem-pretrain", config) == 2
        err = capsys.readouterr().err
        *trace, line = err.splitlines()
        assert line.startswith(f"stmem-pretrain: error: method 'my_lab_i40.{module}': importing its module failed: "
                               f"{error}"), err
        # the module's own traceback lines, none of the library's or importlib's
        assert len(trace) == len(own) and all(text in t for text, t in zip(own, trace)), err
        assert "a bug in stmem-jax" not in err and "stmem_jax" not in err and "importlib" not in err
    # a saved model whose kind names the module is refused without importing it (a model's files run no code)
    with pytest.raises(ValueError, match="unknown model kind 'my_lab_i40.raising'"):
        models.model_from_config({"kind": "my_lab_i40.raising"})
    assert "my_lab_i40.raising" not in sys.modules


def test_the_pretrain_command_names_a_failing_method_module_and_writes_nothing(lab):
    result = subprocess.run([sys.executable, "-m", "stmem_jax.cli", "pretrain", "--config", "st_mem:tiny",
                             "--config.method=my_lab_i40.raising", f"--workdir={lab / 'run'}"], capture_output=True,
                            text=True, timeout=300, cwd=str(lab),
                            env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([ROOT, str(lab)])))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if not line.startswith(("WARNING", "I0000", "W0000"))]
    assert lines[-1] == ("stmem-pretrain: error: method 'my_lab_i40.raising': importing its module failed: "
                         "RuntimeError: the lab server is down")
    assert 'raising.py", line 5, in connect' in result.stderr and "a bug in stmem-jax" not in result.stderr
    assert not os.path.exists(lab / "run")
