import os

import nbformat
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_runs_headless(tmp_path, monkeypatch):
    monkeypatch.setenv("STMEM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("STMEM_REPO_DIR", ROOT)
    monkeypatch.setenv("STMEM_NOTEBOOK_WORKDIR", str(tmp_path / "run"))
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "st_mem_colab.ipynb"), as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on any cell error
    outputs = {i: "".join(o.get("text", "") for o in cell.get("outputs", [])) for i, cell in enumerate(notebook.cells)
               if cell.cell_type == "code"}
    assert any("masked patches per lead: 23" in text for text in outputs.values())
    assert any("features: (4, 64)" in text for text in outputs.values())
    assert os.path.exists(tmp_path / "run" / "reconstruction.png")
    assert os.path.exists(tmp_path / "run" / "linprobe" / "test_metrics.json")
