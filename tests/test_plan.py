"""stmem-plan: the tiny preset's train steps compiled ahead of time for a TPU topology on this CPU
host (needs the [tpu] extra: libtpu), and JAX on the CPU unchanged with libtpu installed."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("libtpu", reason="the [tpu] extra (libtpu) is not installed: pip install -e '.[tpu]'")

from stmem_jax import plan  # noqa: E402
from stmem_jax.train.config import load_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def devices():
    return plan.topology_devices("v5e:2x2")


@pytest.mark.slow
def test_tiny_pretraining_step_compiles_for_v5e_and_fits(devices, capsys):
    config = load_config("st_mem:tiny")
    assert len(devices) == 4 and devices[0].device_kind == "TPU v5 lite"
    assert plan.hbm_bytes(devices) == 16 * 2 ** 30
    assert plan.plan(config, "v5e:2x2", batch_per_chip=8) == 0
    out = capsys.readouterr().out
    assert "4 x TPU v5 lite (16 GiB HBM each)" in out and "(global 32)" in out and "-> fits" in out
    ratio = float(out.split("(ratio ")[1].split(")")[0])
    assert 0.7 < ratio < 1.5  # XLA's FLOP count against the analytic one


@pytest.mark.slow
def test_a_contrastive_pretraining_step_compiles_for_v5e_with_its_two_views(devices):
    """The step takes the inputs the method names (two views), over the global batch, and XLA counts
    about the FLOPs it claims (the momentum copy forward only). (benchmarks/plan_table.py and the
    closing notes compile every method's ViT-B step.)"""
    step = plan.compile_step(load_config("moco_v3:tiny"), devices, 8)
    assert step.global_batch == 32
    assert 0.7 < step.compiled_flops / step.analytic_flops < 1.5, step


def test_a_v4_device_is_a_tensorcore_with_half_its_chips_hbm(devices):
    v4 = plan.topology_devices("v4:2x2x1")  # 4 chips of 2 TensorCores, 32 GiB each
    assert len(v4) == 8 and plan.devices_per_chip(v4) == 2 and plan.hbm_bytes(v4) == 16 * 2 ** 30
    assert plan.devices_per_chip(devices) == 1


@pytest.mark.slow
def test_fine_tuning_step_compiles_with_fsdp_and_the_cached_linear_probe_is_refused(devices):
    config = load_config("ptbxl:st_mem")
    config.model.preset = "tiny"
    config.mesh.fsdp = 2
    step = plan.compile_step(config, devices, 8)
    assert step.global_batch == 32 and 0.7 < step.compiled_flops / step.analytic_flops < 1.5
    config.update(mode="linprobe")
    config.train.linprobe = "cached_features"
    with pytest.raises(ValueError, match="nothing to plan"):
        plan.compile_step(config, devices, 8)
    with pytest.raises(ValueError, match="unknown TPU topology 'v9z:1x1'"):
        plan.topology_devices("v9z:1x1")


@pytest.mark.parametrize("imports", ["jax", "stmem_jax, jax", "jax, stmem_jax"])
def test_jax_on_the_cpu_is_unchanged_with_libtpu_installed(imports):
    """Plain JAX falls back to the CPU; with stmem_jax imported (before or after jax), libtpu is not
    even started on this host without TPU chips: none of its start-up errors on stderr."""
    code = f"import {imports}, jax.numpy as jnp; print(jax.default_backend(), float(jnp.arange(4.0) @ jnp.arange(4.0)))"
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"} | {"ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0 and out.stdout.split() == ["cpu", "14.0"], out.stderr[-2000:]
    if "stmem_jax" in imports:
        assert "TPU" not in out.stderr, out.stderr[-2000:]
