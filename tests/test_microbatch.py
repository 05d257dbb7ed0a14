import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from stmem_jax import infer, microbatch
from stmem_jax import mesh as meshlib
from stmem_jax.models import create_model, init_variables
from stmem_jax.train import downstream, loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(width=64, depth=1, heads=1, mlp_dim=128)
LEADS = tuple(range(12))


def test_automatic_micro_batches_keep_16_examples_per_cpu_device_and_honour_a_setting():
    one = jax.devices()[:1]
    assert [microbatch.count(b, 0, one) for b in (8, 16, 64, 24, 21, 17)] == [1, 1, 4, 2, 3, 1]  # 17: one batch
    assert [microbatch.count(b, 0, one * 8) for b in (64, 256, 20)] == [1, 2, 1]  # per device; 20 does not split
    assert microbatch.count(64, 2, one) == 2
    with pytest.raises(ValueError, match="batch_size 64 is not divisible by grad_accum_steps 3"):
        microbatch.count(64, 3, one)


def test_split_keeps_each_devices_rows_and_merge_undoes_it():
    x = np.arange(12 * 2).reshape(12, 2)
    parts = microbatch.split(x, 3)
    assert parts.shape == (3, 4, 2) and list(parts[0, :, 0]) == [0, 6, 12, 18]  # rows 0, 3, 6, 9
    np.testing.assert_array_equal(microbatch.merge(parts), x)


def test_micro_batched_inference_equals_one_pass(monkeypatch):
    """The evaluation forward in micro-batches (here of 4 per device) gives every crop's own output,
    in order, on the mesh's devices."""
    mesh = meshlib.make_mesh()
    model = create_model("st_mem_classifier", "tiny", **SIZES, num_classes=3)
    params = jax.device_put(init_variables(model, jax.random.key(0))["params"], meshlib.replicated(mesh))
    series = jax.random.normal(jax.random.key(1), (8 * jax.device_count(), 2, 12, 2250))
    series = jax.device_put(series, meshlib.batch_sharding(mesh))
    whole = jax.jit(lambda p, s: infer.crop_outputs(model, p, s, LEADS))(params, series)
    monkeypatch.setattr(microbatch, "CPU_MICRO_BATCH", 4)
    assert microbatch.count(series.shape[0] * 2) == 4
    micro = jax.jit(lambda p, s: infer.crop_outputs(model, p, s, LEADS))(params, series)
    np.testing.assert_allclose(micro, whole, rtol=1e-5, atol=1e-5)


def test_micro_batched_classifier_step_equals_one_batch():
    """Fine-tuning in 4 micro-batches: the same loss and gradients as one batch (no dropout here)."""
    mesh = meshlib.make_mesh()
    model = create_model("st_mem_classifier", "tiny", **SIZES, num_classes=3, drop_path=0.0)
    params = init_variables(model, jax.random.key(0))["params"]
    tx = optax.sgd(1.0)  # parameter change = gradient
    state = jax.device_put(loop.TrainState.create(params, tx), meshlib.replicated(mesh))
    batch = 4 * jax.device_count()
    inputs = [jax.device_put(x, meshlib.batch_sharding(mesh)) for x in
              (jax.random.normal(jax.random.key(1), (batch, 12, 2250)), np.arange(batch) % 3)]
    key = jax.random.key(2)
    one, m1 = jax.jit(downstream.make_train_step(model, tx, False, LEADS, 1))(state, *inputs, key)
    four, m4 = jax.jit(downstream.make_train_step(model, tx, False, LEADS, 4))(state, *inputs, key)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    for a, b, p in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), jax.tree.leaves(params)):
        grad_one, grad_four = np.asarray(p - a), np.asarray(p - b)
        np.testing.assert_allclose(grad_four, grad_one, rtol=1e-4, atol=1e-4 * np.abs(grad_one).max() + 1e-9)


def test_the_same_on_eight_devices():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", "micro_batched"], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0 and "2 passed" in result.stdout, result.stdout[-3000:] + result.stderr[-2000:]
