"""The I/O layer (``stmem_jax.core.fileio``) on local paths and on a bucket of a GCS-API server on
localhost, reached through STORAGE_EMULATOR_HOST alone; its errors as one line naming the URL."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from stmem_jax.core import fileio
from stmem_jax.core.fileio import MissingObject, OutsideFolder, StorageError
from tests.gcs_server import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_url_stays_a_url_and_local_paths_are_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fileio.absolute("gs://b/run/") == "gs://b/run"
    assert fileio.absolute("run") == os.path.join(str(tmp_path), "run")
    assert fileio.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
    assert fileio.split("gs://b/run/model") == ("gs://b/run", "model")
    assert (fileio.basename("gs://b/shards/"), fileio.dirname("gs://b/shards/x")) == ("shards", "gs://b/shards")
    assert fileio.is_url("s3://b/k") and not fileio.is_url("C:/data") and not fileio.is_url("runs/gs:/b")
    with pytest.raises(OutsideFolder, match="leads outside"):
        fileio.inside("gs://b/data", "../other/x.dat")
    with pytest.raises(OutsideFolder, match="leads outside"):
        fileio.inside("gs://b/data", "/etc/passwd")
    assert fileio.inside("gs://b/data", "sub/../x.dat") == "gs://b/data/x.dat"
    assert os.listdir(tmp_path) == []  # nothing local was made of a URL


def test_files_and_folders_in_a_bucket(bucket, tmp_path):
    root = fileio.join(bucket, "run")
    fileio.makedirs(root)  # a bucket's folders need no creating
    with fileio.open(fileio.join(root, "notes.txt"), "w") as f:
        f.write("ECG \u00b5V\n")
    assert fileio.read_text(fileio.join(root, "notes.txt")) == "ECG \u00b5V\n"
    with pytest.raises(RuntimeError), fileio.open(fileio.join(root, "half.bin"), "wb") as f:
        f.write(b"partial")
        raise RuntimeError("the writer fails")
    assert not fileio.exists(fileio.join(root, "half.bin"))  # a failed write leaves no object
    with fileio.atomic_path(fileio.join(root, "a", "table.npz"), ".npz") as tmp:
        np.savez(tmp, x=np.arange(5))
    with fileio.open(fileio.join(root, "a", "table.npz"), "rb") as f, np.load(f) as table:
        assert table["x"].tolist() == [0, 1, 2, 3, 4]
    fileio.write_bytes(fileio.join(root, "a", "b", "c.dat"), b"123")
    fileio.write_bytes(fileio.join(root, "a", ".hidden"), b"")
    assert fileio.walk(fileio.join(root, "a")) == (["b/c.dat", "table.npz"], [])
    assert fileio.walk(fileio.join(root, "a"), "*.dat") == (["b/c.dat"], [])
    assert fileio.listdir(root) == ["a", "notes.txt"]
    assert fileio.isdir(fileio.join(root, "a")) and fileio.isfile(fileio.join(root, "a", "b", "c.dat"))
    assert fileio.file_problem(fileio.join(root, "a")) == "is not a regular file"
    assert fileio.file_problem(fileio.join(root, "nothing")) == "missing"
    assert fileio.sizes([fileio.join(root, "a", "b", "c.dat"), fileio.join(root, "a", "nothing")]) == {
        fileio.join(root, "a", "b", "c.dat"): 3}
    with fileio.local_copy(fileio.join(root, "a", "b", "c.dat"), fileio.join(root, "notes.txt")) as (data, notes):
        assert open(data, "rb").read() == b"123" and os.path.dirname(data) == os.path.dirname(notes)
    assert not os.path.exists(data)
    fileio.rename(fileio.join(root, "a"), fileio.join(root, "moved"))
    assert fileio.walk(fileio.join(root, "moved"))[0] == ["b/c.dat", "table.npz"]
    assert not fileio.exists(fileio.join(root, "a", "table.npz"))
    fileio.rmtree(root)
    assert fileio.listdir(bucket) == []
    with pytest.raises(StorageError, match="cannot be appended"):
        with fileio.open(fileio.join(root, "log"), "a"):
            pass


def test_a_missing_bucket_or_object_is_one_line_naming_the_url(bucket):
    missing = "gs://no-such-bucket-i39/run"
    with pytest.raises(MissingObject) as error:
        fileio.makedirs(missing)
    assert str(error.value) == f"{missing}: bucket no-such-bucket-i39 does not exist"
    with pytest.raises(FileNotFoundError) as error:
        fileio.read_bytes(fileio.join(bucket, "absent.json"))
    assert str(error.value) == f"{bucket}/absent.json: no such object"


@pytest.mark.slow
def test_commands_fail_in_one_line_when_the_server_is_down_bucket_or_object_missing(gcs_server, bucket, tmp_path):
    """What a pod user sees: one line naming the URL and the cause, within the stated retry bound, and
    no local folder named after the URL."""
    def run(args, endpoint=gcs_server.url):
        env = dict(os.environ, STORAGE_EMULATOR_HOST=endpoint, STMEM_STORAGE_RETRIES="2", PYTHONPATH=ROOT)
        start = time.monotonic()
        result = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=tmp_path, env=env,
                                timeout=240)
        return result, time.monotonic() - start

    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there: the server is stopped
    result, seconds = run(["-m", "data_prep", "synthetic", "--records", "20", "--quiet",
                           "--output", f"{bucket}/shards"], endpoint=down)
    assert result.returncode == 1 and seconds < 60, (result.stderr[-2000:], seconds)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"stmem-prepare: error: {bucket}/shards"), result.stderr
    assert f"cannot reach {down} after 2 attempt(s)" in lines[0]

    result, _ = run(["-m", "stmem_jax.cli", "pretrain", "--config", "st_mem:tiny", "--workdir", f"{bucket}/run",
                     "--config.data.dir=gs://no-such-bucket-i39/shards"])
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == \
        "stmem-pretrain: error: data directory gs://no-such-bucket-i39/shards does not exist"

    result, _ = run(["-m", "stmem_jax.embed", "--model", f"{bucket}/none", "--files", f"{bucket}/ecgs",
                     "--output", f"{bucket}/features.npz"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"stmem-embed: error: {bucket}/none holds no saved model")
    assert os.listdir(tmp_path) == []
