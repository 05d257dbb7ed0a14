"""ST-MEM in JAX/Flax."""

import glob
import importlib.util
import os
import sys

__version__ = "0.1.0"


def _skip_absent_tpu() -> None:
    """With libtpu installed (the [tpu] extra) on a host with neither a TPU chip nor an NVIDIA GPU,
    JAX's first use would start libtpu, which prints start-up errors (and takes the lock file
    /tmp/libtpu_lockfile) before JAX falls back to the CPU; such a host runs on the CPU directly,
    unless ``JAX_PLATFORMS`` says otherwise. Ahead-of-time compilation for TPU topologies (``stmem-plan``) loads libtpu itself."""
    if os.environ.get("JAX_PLATFORMS") or importlib.util.find_spec("libtpu") is None:
        return
    google = "0x1ae0"  # the PCI vendor of TPU chips
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as f:
                if f.read().strip() == google:
                    return
        except OSError:
            continue
    if glob.glob("/dev/nvidia[0-9]*"):
        return
    if "jax" in sys.modules:
        sys.modules["jax"].config.update("jax_platforms", "cpu")
    else:
        os.environ["JAX_PLATFORMS"] = "cpu"


_skip_absent_tpu()
