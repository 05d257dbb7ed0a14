import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# one persistent compilation cache for the suite and the commands it starts: identical steps compile once
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), ".pytest_cache", "xla"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stmem_jax.models import create_model, init_variables  # noqa: E402


def perturbed(variables, seed=0, scale=0.05):
    """Variables with every leaf shifted by noise, so zero biases and unit scales are exercised too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32),
                        jax.device_get(variables))


# the tiny preset's decoder (one head, 64 wide) has no output projection in the public layout; a decoder
# of two heads has one, so the tests' tiny models round-trip through every tensor of it
PUBLIC_DECODER = dict(decoder_width=128, decoder_heads=2)


@pytest.fixture(scope="session")
def tiny_stmem():
    model = create_model("st_mem", "tiny", **PUBLIC_DECODER)
    return model, perturbed(init_variables(model, jax.random.key(0)))


@pytest.fixture(scope="session")
def tiny_classifier():
    model = create_model("st_mem_classifier", "tiny", num_classes=4)
    return model, perturbed(init_variables(model, jax.random.key(1)), seed=1)


@pytest.fixture
def series():
    return np.random.default_rng(7).standard_normal((2, 12, 2250)).astype(np.float32)


@pytest.fixture(scope="session")
def synthetic_shards(tmp_path_factory):
    """A prepared dataset of 240 synthetic 12-lead ECGs (PTB-XL layout through stmem-prepare, the
    authors' recipe)."""
    from data_prep.sources import PTBXL
    from data_prep.synthetic import write_ptbxl
    from data_prep.writer import prepare
    from stmem_jax.core.recipe import AUTHORS

    root = tmp_path_factory.mktemp("synthetic")
    write_ptbxl(str(root / "native"), 240, seed=0, workers=1, progress=False)
    prepare(PTBXL(str(root / "native")), str(root / "shards"), AUTHORS, shard_windows=60, progress=False)
    return str(root / "shards")



@pytest.fixture(scope="session")
def gcs_server():
    """One GCS-API server on localhost for the session (tests/gcs_server.py); STORAGE_EMULATOR_HOST
    points the library, and the commands the tests start, at it. Each test makes its own bucket."""
    from tests.gcs_server import GCSServer

    server = GCSServer().start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    yield server
    server.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture
def bucket(gcs_server, request):
    """A new, empty bucket (``gs://NAME``) on the session's server."""
    name = "b" + str(abs(hash(request.node.nodeid)))[:12] + str(len(gcs_server.__dict__.setdefault("made", [])))
    gcs_server.made.append(name)
    return gcs_server.create_bucket(name)
