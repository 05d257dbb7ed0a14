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
