"""The package's layering: the inference path loads no trainer, stmem_jax never imports data_prep,
data_prep and the shared core load neither JAX nor TensorFlow."""

import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_modules(package):
    """{file: [absolute module names it imports]} for every .py file under ``package``."""
    out = {}
    for folder, _, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                tree = ast.parse(open(path).read(), path)
                out[os.path.relpath(path, ROOT)] = [
                    alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
                ] + [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return out


def loaded_by(statement):
    code = f"import sys\n{statement}\nprint(sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert result.returncode == 0, result.stderr[-2000:]
    return eval(result.stdout.strip().splitlines()[-1])


def test_the_inference_path_loads_no_trainer():
    modules = loaded_by("import stmem_jax.api, stmem_jax.embed, stmem_jax.predict")
    assert [m for m in modules if m.startswith(("stmem_jax.train", "data_prep"))] == []


def test_stmem_jax_never_imports_data_prep_and_the_core_imports_only_itself():
    for path, names in imported_modules("stmem_jax").items():
        assert not [n for n in names if n.split(".")[0] == "data_prep"], path
        if path.startswith(os.path.join("stmem_jax", "core")):
            assert all(n.startswith("stmem_jax.core") for n in names if n.startswith("stmem_jax")), path
    for path, names in imported_modules("data_prep").items():
        own = [n for n in names if n.startswith("stmem_jax")]
        assert all(n == "stmem_jax" or n.startswith("stmem_jax.core") for n in own), (path, own)


def test_preparation_loads_neither_jax_nor_tensorflow():
    modules = loaded_by("import data_prep.cli, data_prep.writer, data_prep.sources, data_prep.synthetic")
    assert not [m for m in modules if m.split(".")[0] in ("jax", "tensorflow", "flax")]
