"""The package's layering: the inference path loads no trainer, stmem_jax never imports data_prep,
data_prep and the shared core load neither JAX nor TensorFlow."""

import ast
import os
import subprocess
import sys

import pytest

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


@pytest.mark.slow
def test_the_inference_path_loads_no_trainer_and_the_api_no_tensorflow():
    modules = loaded_by("import stmem_jax.api, stmem_jax.embed, stmem_jax.predict")
    assert [m for m in modules if m.startswith(("stmem_jax.train", "data_prep"))] == []
    assert not [m for m in loaded_by("from stmem_jax import api") if m.split(".")[0] == "tensorflow"]


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


def _command_modules():
    """Modules that are commands: the command layer (``stmem_jax.cli``) and any module with a ``main``."""
    commands = {"stmem_jax.cli"}
    for folder in ("stmem_jax", "data_prep"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(directory, name)
                tree = ast.parse(open(path).read(), path)
                if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
                    commands.add(os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__"))
    return commands


def test_no_library_module_imports_a_command_module():
    """Commands live above the library: the trainers, inference and the API import no command."""
    commands = _command_modules()
    assert {"stmem_jax.cli", "stmem_jax.embed", "data_prep.cli"} <= commands
    for folder, _, files in os.walk(os.path.join(ROOT, "stmem_jax")):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.relpath(os.path.join(folder, name), ROOT)
            if path[:-3].replace(os.sep, ".").removesuffix(".__init__") in commands:
                continue
            imported = set()
            for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read(), path)):
                if isinstance(node, ast.Import):
                    imported |= {alias.name for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module:  # the module, or a module imported from it
                    imported |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
            assert not imported & commands, (path, imported & commands)


def _calls(path):
    tree = ast.parse(open(os.path.join(ROOT, path)).read(), path)
    return {node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            for node in ast.walk(tree) if isinstance(node, ast.Call)}


def test_the_trainers_plan_and_benchmark_build_their_steps_in_one_place():
    """``train.setup.build`` makes model, optimizer, state and step for pre-training, fine-tuning,
    stmem-plan and the throughput benchmark; nothing else builds a train step or an optimizer (but
    the linear probe's, over its head alone)."""
    users = ["stmem_jax/train/pretrain.py", "stmem_jax/train/downstream.py", "stmem_jax/plan.py",
             "benchmarks/train_throughput.py"]
    assert all("build" in _calls(path) for path in users)
    builders = {"pretrain_step", "classifier_step", "from_config", "optimizer", "adamw", "create"}
    for folder in ("stmem_jax", "benchmarks"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.relpath(os.path.join(directory, name), ROOT)
                if path in ("stmem_jax/train/setup.py", "stmem_jax/train/optim.py", "stmem_jax/train/linprobe.py",
                            "stmem_jax/train/loop.py", "benchmarks/torch_reference.py"):
                    continue
                assert not _calls(path) & builders, (path, _calls(path) & builders)


def test_no_code_outside_the_method_modules_compares_with_a_method_name():
    """A method is a plugin: the trainers, the grid, stmem-plan and the benchmarks know no method by name."""
    from stmem_jax import methods, models

    names = set(methods.names()) | set(models.kinds())
    for folder in ("stmem_jax", "benchmarks"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            if directory.startswith(os.path.join(ROOT, "stmem_jax", "methods")):
                continue
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(directory, name)
                for node in ast.walk(ast.parse(open(path).read(), path)):
                    if isinstance(node, (ast.Compare, ast.Match)):
                        strings = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant)}
                        assert not strings & names, f"{path}:{node.lineno} compares with a method's name"


# calls that touch a file system: outside the I/O layer (stmem_jax/core/fileio.py) they may not take
# a user's path, which may be a bucket URL
FILE_CALLS = {"open", "io.open", "os.path.exists", "os.path.isfile", "os.path.isdir", "os.path.getsize",
              "os.path.abspath", "os.path.realpath", "os.path.join", "os.listdir", "os.makedirs", "os.mkdir",
              "os.remove", "os.unlink", "os.replace", "os.rename", "os.rmdir", "os.stat", "os.walk", "os.scandir",
              "shutil.rmtree", "shutil.copyfile", "shutil.copy", "shutil.move", "glob.glob", "Path", "pathlib.Path",
              "epath.Path", "np.load", "np.save", "np.savez", "np.savez_compressed", "np.fromfile",
              "tf.data.TFRecordDataset", "tf.io.gfile.GFile", "tf.summary.create_file_writer", "h5py.File",
              "torch.load", "torch.save", "fcntl.flock", "os.open"}
# (file, call): why it takes no user path
FILE_ACCESS_ALLOWED = {
    ("stmem_jax/__init__.py", "glob.glob"): "device detection in /sys and /dev",
    ("stmem_jax/__init__.py", "open"): "device detection in /sys",
    ("stmem_jax/flops.py", "open"): "/proc/cpuinfo",
    ("stmem_jax/cli.py", "os.path.join"): "the XLA compilation cache under ~/.cache",
    ("stmem_jax/demo.py", "os.path.join"): "the model shipped inside the package",
    ("stmem_jax/demo.py", "os.path.abspath"): "the model shipped inside the package",
    ("stmem_jax/train/config.py", "os.path.abspath"): "the shipped configs' folder",
    ("stmem_jax/plugins.py", "os.path.abspath"): "the package's own folder (its frames left out of a plugin's traceback)",
    ("configs/downstream/grid.py", "os.path.abspath"): "a shipped config beside it",
    ("stmem_jax/train/config.py", "os.path.join"): "config files are Python modules, imported from local files",
    ("stmem_jax/train/config.py", "os.listdir"): "the shipped configs' folder",
    ("stmem_jax/train/config.py", "os.path.isdir"): "the shipped configs' folder",
    ("stmem_jax/train/config.py", "os.path.isfile"): "a config file is a local Python module",
    ("stmem_jax/train/config.py", "open"): "the config file's source, for the config's fingerprint",
    ("configs/downstream/grid.py", "os.path.join"): "a shipped config beside it",
    ("configs/downstream/grid.py", "os.listdir"): "the shipped configs beside it",
    ("stmem_jax/train/reporting.py", "open"): "the local folder of a fileio.LocalMirror",
    ("stmem_jax/train/reporting.py", "os.path.join"): "the local folder of a fileio.LocalMirror",
    ("stmem_jax/train/reporting.py", "os.replace"): "the local folder of a fileio.LocalMirror",
    ("stmem_jax/train/reporting.py", "tf.summary.create_file_writer"): "the local folder of a fileio.LocalMirror",
    ("stmem_jax/data/records.py", "tf.data.TFRecordDataset"): "local shards only (URLs: the I/O layer's stream)",
    ("stmem_jax/core/fingerprint.py", "np.savez_compressed"): "the local name fileio.atomic_path gives",
    ("stmem_jax/core/fingerprint.py", "np.load"): "the file object fileio.open gives",
    ("stmem_jax/train/linprobe.py", "np.load"): "the file object fileio.open gives",
    ("stmem_jax/train/linprobe.py", "np.savez"): "the file object fileio.open gives",
    ("stmem_jax/train/downstream.py", "np.savez"): "the file object fileio.open gives",
    ("stmem_jax/embed.py", "np.savez"): "the file object fileio.open gives",
    ("stmem_jax/convert.py", "torch.load"): "the local copy fileio.local_copy gives",
    ("stmem_jax/convert.py", "torch.save"): "the file object fileio.open gives",
    ("stmem_jax/model_dir.py", "epath.Path"): "orbax's path type, of fileio.absolute's path or URL",
    ("data_prep/sources/code15.py", "h5py.File"): "the file object fileio.open gives",
    ("data_prep/writer.py", "os.path.join"): "the lock file beside a local output (a bucket has no lock)",
    ("data_prep/writer.py", "os.path.realpath"): "the lock file beside a local output (links resolved)",
    ("data_prep/writer.py", "os.makedirs"): "the lock file beside a local output",
    ("data_prep/writer.py", "os.open"): "the lock file beside a local output",
    ("data_prep/writer.py", "fcntl.flock"): "the lock file beside a local output",
    ("data_prep/writer.py", "os.stat"): "the lock file beside a local output",
    ("data_prep/writer.py", "os.remove"): "the lock file beside a local output",
    ("data_prep/writer.py", "os.path.exists"): "--overwrite's swap of a local output (a bucket's is below it)",
    ("data_prep/writer.py", "shutil.rmtree"): "--overwrite's swap of a local output",
    ("data_prep/writer.py", "os.rename"): "--overwrite's swap of a local output",
    ("data_prep/synthetic.py", "Path"): "test-data writers of other layouts (MIMIC-IV-ECG, CardioSoft): local",
}


def _dotted(node):
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def test_user_paths_reach_files_only_through_the_io_layer():
    """No module but ``core/fileio.py`` opens, lists, stats or writes a path with the file-system
    calls that cannot take a bucket URL, but where ``FILE_ACCESS_ALLOWED`` says why no user path
    reaches it; every allowed entry is still used."""
    found = set()
    for folder in ("stmem_jax", "data_prep", "configs"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.relpath(os.path.join(directory, name), ROOT)
                if path == os.path.join("stmem_jax", "core", "fileio.py"):
                    continue
                for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read(), path)):
                    if isinstance(node, ast.Call) and _dotted(node.func) in FILE_CALLS:
                        key = (path.replace(os.sep, "/"), _dotted(node.func))
                        assert key in FILE_ACCESS_ALLOWED, f"{path}:{node.lineno} calls {key[1]}: use core.fileio"
                        found.add(key)
    assert set(FILE_ACCESS_ALLOWED) == found, set(FILE_ACCESS_ALLOWED) - found
