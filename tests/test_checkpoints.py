"""Damaged checkpoints: checksums catch flipped bytes, unreadable steps are skipped, and a run
resumes from the newest intact step with the damaged ones moved aside."""

import glob
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stmem_jax.train import checkpoints as ck
from stmem_jax.train.checkpoints import Checkpoints, DamagedCheckpoint


def state(step):
    return {"w": jnp.arange(20000, dtype=jnp.float32).reshape(100, 200) * step / 7,
            "b": jnp.full((7,), step, jnp.bfloat16), "n": jnp.int32(step)}


def target():
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state(1))


def three_steps(workdir):
    with Checkpoints(str(workdir), keep=3, asynchronous=False) as c:
        for step in (1, 2, 3):
            c.save(step, state(step))
    return os.path.join(str(workdir), "checkpoints")


def largest_array_file(directory):
    return max(glob.glob(os.path.join(directory, "default", "ocdbt.process_0", "d", "*")), key=os.path.getsize)


def numpy_checksum(x):
    """The documented checksum, computed independently: sum of bits x (2i + 1) modulo 2^32."""
    bits = np.asarray(x).reshape(-1).view(np.uint32).astype(np.uint64)
    return int((bits * (2 * np.arange(bits.size, dtype=np.uint64) + 1)).sum() % 2 ** 32)


def test_checksums_change_with_any_flipped_bit():
    x = jnp.linspace(-3, 3, 4096, dtype=jnp.float32)
    base = ck.checksums({"x": x})["['x']"]
    assert base == numpy_checksum(x)
    bits = np.asarray(x).view(np.uint32).copy()
    for index, bit in ((0, 0), (100, 31), (4095, 17), (2048, 7)):
        flipped = bits.copy()
        flipped[index] ^= np.uint32(1 << bit)
        assert ck.checksums({"x": jnp.asarray(flipped.view(np.float32))})["['x']"] != base


def test_checksums_do_not_depend_on_the_sharding():
    script = textwrap.dedent("""
        import os
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import NamedSharding, PartitionSpec as P
        from stmem_jax.train.checkpoints import checksums
        x = jnp.asarray(np.linspace(-3, 3, 8 * 4096, dtype=np.float32).reshape(64, 512))
        mesh = jax.make_mesh((4, 2), ("a", "b"))
        for spec in (P(), P("a"), P("a", "b"), P(None, ("a", "b"))):
            print(checksums({"x": jax.device_put(x, NamedSharding(mesh, spec))})["['x']"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0, out.stderr[-2000:]
    x = np.linspace(-3, 3, 8 * 4096, dtype=np.float32).reshape(64, 512)
    assert set(map(int, out.stdout.split())) == {numpy_checksum(x)}


def test_a_flipped_byte_in_the_latest_step_falls_back_to_the_previous_one(tmp_path, capsys):
    directory = three_steps(tmp_path)
    path = largest_array_file(os.path.join(directory, "3"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    with Checkpoints(str(tmp_path), keep=3, asynchronous=False) as c:
        with pytest.raises(DamagedCheckpoint, match="step 3 .*differ from their checksums"):
            c.restore(3, target())
        restored, step = c.restore_latest(target())
        assert step == 2 and sorted(c.manager.all_steps()) == [1, 2]
        np.testing.assert_array_equal(restored["w"], state(2)["w"])
        c.save(3, state(3))  # the run goes on and saves step 3 again
    assert "checkpoint step 3" in capsys.readouterr().out
    assert os.path.isdir(os.path.join(directory, "broken-3"))  # moved aside, not deleted


def test_an_unreadable_latest_step_falls_back_and_none_intact_starts_afresh(tmp_path, capsys):
    directory = three_steps(tmp_path)
    os.remove(largest_array_file(os.path.join(directory, "3")))
    with Checkpoints(str(tmp_path), keep=3, asynchronous=False) as c:
        restored, step = c.restore_latest(target())
        assert step == 2 and int(restored["n"]) == 2
    out = capsys.readouterr().out
    assert "step 3" in out and "cannot be read" in out
    for step in (1, 2):
        os.remove(largest_array_file(os.path.join(directory, str(step))))
    with Checkpoints(str(tmp_path), keep=3, asynchronous=False) as c:
        assert c.restore_latest(target()) == (None, None)
    assert sorted(os.listdir(directory)) == ["broken-1", "broken-2", "broken-3", ck.CHECKSUMS]


def test_a_damaged_step_is_moved_aside_beside_an_earlier_broken_one_and_the_run_goes_on(tmp_path, capsys):
    directory = three_steps(tmp_path)
    os.makedirs(os.path.join(directory, "broken-3"))  # step 3 was damaged once before
    os.remove(largest_array_file(os.path.join(directory, "3")))
    with Checkpoints(str(tmp_path), keep=3, asynchronous=False) as c:
        restored, step = c.restore_latest(target())
        assert step == 2 and sorted(c.manager.all_steps()) == [1, 2]
        c.save(3, state(3))  # the resumed run reaches step 3 again
        assert c.latest_step() == 3
    assert "broken-3-1" in capsys.readouterr().out
    assert {"broken-3", "broken-3-1", "3"} <= set(os.listdir(directory))
