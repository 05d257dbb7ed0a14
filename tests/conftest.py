import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stmem_jax.models import create_model, init_variables  # noqa: E402


def perturbed(variables, seed=0, scale=0.05):
    """Variables with every leaf shifted by noise, so zero biases and unit scales are exercised too."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32),
                        jax.device_get(variables))


@pytest.fixture(scope="session")
def tiny_stmem():
    model = create_model("st_mem", "tiny")
    return model, perturbed(init_variables(model, jax.random.key(0)))


@pytest.fixture(scope="session")
def tiny_classifier():
    model = create_model("st_mem_classifier", "tiny", num_classes=4)
    return model, perturbed(init_variables(model, jax.random.key(1)), seed=1)


@pytest.fixture
def series():
    return np.random.default_rng(7).standard_normal((2, 12, 2250)).astype(np.float32)
