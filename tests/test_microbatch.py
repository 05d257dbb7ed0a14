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
from stmem_jax.train import loop, steps
from tests import eight_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = dict(width=64, depth=1, heads=1, mlp_dim=128)
LEADS = tuple(range(12))


def test_automatic_micro_batches_on_cpu_hold_at_most_8_examples_and_1_2_m_activations_and_a_setting_wins():
    one = jax.devices()[:1]
    assert [microbatch.count(b, 0, one) for b in (8, 16, 64, 24, 21, 17)] == [1, 2, 8, 3, 3, 1]  # 17: one batch
    assert [microbatch.count(b, 0, one * 8) for b in (64, 256, 20)] == [1, 4, 1]  # per device; 20 does not split
    assert microbatch.count(64, 2, one) == 2
    # at most ~1.2 M elements of activation: ViT-B fine-tuning (384 tokens x 768) and pre-training (108 kept
    # tokens x 768 + 384 x 256 in the decoder) 4 per micro-batch, tiny (width 128) 8, and never fewer than 4
    per_example = {name: create_model(kind, preset).activation(12) for name, kind, preset in
                   [("vit_ft", "st_mem_classifier", "vit_base"), ("vit_pre", "st_mem", "vit_base"),
                    ("tiny_ft", "st_mem_classifier", "tiny"), ("tiny_pre", "st_mem", "tiny")]}
    assert {name: microbatch.count(16, 0, one, n) for name, n in per_example.items()} == \
        {"vit_ft": 4, "vit_pre": 4, "tiny_ft": 2, "tiny_pre": 2}
    assert microbatch.count(16, 0, one, 10 ** 7) == 4 and microbatch.count(16, 2, one, 10 ** 7) == 2
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
    monkeypatch.setattr(microbatch, "CPU_MICRO_BATCH", 16)
    assert microbatch.count(series.shape[0] * 2) == 1
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
    one, m1 = jax.jit(steps.classifier_step(model, tx, False, LEADS, 1))(state, *inputs, key)
    four, m4 = jax.jit(steps.classifier_step(model, tx, False, LEADS, 4))(state, *inputs, key)
    np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
    for a, b, p in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params), jax.tree.leaves(params)):
        grad_one, grad_four = np.asarray(p - a), np.asarray(p - b)
        np.testing.assert_allclose(grad_four, grad_one, rtol=1e-4, atol=1e-4 * np.abs(grad_one).max() + 1e-9)


@pytest.mark.slow
def test_the_same_on_eight_devices():
    eight_devices.run_pytest(__file__, "micro_batched", passed=2)


STEP_MEMORY = """
import jax, jax.numpy as jnp, optax
import stmem_jax
from stmem_jax.models import create_model
from stmem_jax.train import loop, steps
from tests import eight_devices
from stmem_jax.train.optim import adamw
model = create_model("st_mem_classifier", "tiny", num_classes=5)
leads = tuple(range(12))
params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 12, 2250)), leads=leads))["params"]
tx = adamw(optax.constant_schedule(1e-4), params)
state = jax.eval_shape(lambda p: loop.TrainState.create(p, tx), params)
step = jax.jit(steps.classifier_step(model, tx, False, leads, 1))
compiled = step.lower(state, jax.ShapeDtypeStruct((16, 12, 2250), jnp.float32),
                      jax.ShapeDtypeStruct((16,), jnp.int32), jax.random.key(1)).compile()
print(compiled.memory_analysis().temp_size_in_bytes)
"""


@pytest.mark.slow
def test_cpu_steps_keep_fewer_activations_alive_unless_xla_flags_say_otherwise():
    """Importing stmem_jax has XLA:CPU order a step's operations to save memory, not for concurrency
    (the ViT-B fine-tuning step at batch 32: 6.6 instead of 8.7 GB of temporaries); a user's
    XLA_FLAGS that names the flag wins."""
    def temporaries(xla_flags):
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cpu"}
        env |= {"XLA_FLAGS": xla_flags} if xla_flags else {}
        out = subprocess.run([sys.executable, "-c", STEP_MEMORY], capture_output=True, text=True, timeout=300,
                             env=env, cwd=ROOT)
        assert out.returncode == 0, out.stderr[-2000:]
        return int(out.stdout.split()[-1])

    concurrent = temporaries("--xla_cpu_enable_concurrency_optimized_scheduler=true")
    assert temporaries("") < 0.9 * concurrent
