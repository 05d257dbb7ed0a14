"""The Colab notebook run headless as a Colab user runs it: the notebook alone in a folder outside any
clone, its install cell cloning the repository from ``REPO_URL`` (this clone's path: git clones its
committed HEAD, not uncommitted edits), then every cell at the smoke-test size.

Every requirement is already installed in the suite's environment, so the install cell installs
nothing here (pip is kept off the index, so an install attempt fails the test instead of changing the
environment): pip's download and install in Colab and the GPU are not exercised. What is: finding or
cloning the repository, and the kernel importing the fresh clone's code without a restart, although
this environment has stmem_jax installed from elsewhere (the checkout, editable)."""

import json
import os
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "st_mem_colab.ipynb")


def _install_cell() -> str:
    return next(c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code")


@pytest.mark.slow
def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
    content = tmp_path / "content"  # like Colab's /content: the notebook, no clone around it
    content.mkdir()
    monkeypatch.setenv("STMEM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("STMEM_REPO_URL", ROOT)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("STMEM_NOTEBOOK_WORKDIR", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(content)}}).execute()  # raises on any cell error
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    clone = content / "stmem-jax"
    assert f" from {clone / 'stmem_jax'}\n" in text  # the fresh clone, not the checkout
    assert "masked patches per lead: 23" in text
    assert "features: (4, 64)" in text
    run = content / "stmem_notebook_run"
    for figure in ("pretraining_curve.png", "reconstruction.png", "finetuning_curve.png", "embedding_map.png"):
        assert (run / figure).read_bytes().startswith(b"\x89PNG"), figure
    shipped = str(clone / "stmem_jax" / "pretrained" / "synthetic-w64")
    for mode in ("finetune", "linprobe"):
        with open(run / mode / "test_metrics.json") as f:
            record = json.load(f)
        assert (record["mode"], record["init"], record["task"]) == (mode, shipped, "st_mem")
        assert record["test"]["num_examples"] > 0
        assert f"macro AUROC {record['test']['auroc']:.3f}" in text


def test_install_cell_uses_the_enclosing_clone_or_names_repo_url(tmp_path):
    cell = _install_cell()
    env = {k: v for k, v in os.environ.items() if k != "STMEM_REPO_URL"} | {"PIP_NO_INDEX": "1"}
    inside = subprocess.run([sys.executable, "-c", cell], cwd=os.path.join(ROOT, "notebooks"), env=env,
                            capture_output=True, text=True, timeout=120)
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.endswith(f"from {os.path.join(ROOT, 'stmem_jax')}\n")
    assert not os.path.exists(os.path.join(ROOT, "notebooks", "stmem-jax"))  # used in place, not cloned

    outside = subprocess.run([sys.executable, "-c", cell], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=120)
    assert outside.returncode == 1
    assert outside.stderr.splitlines() == [
        "stmem-jax not found: set REPO_URL in the install cell to its git URL, or run from a clone"]
