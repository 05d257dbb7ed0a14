"""Peak rates of common accelerators, for MFU. (Each model counts its own FLOPs:
``model.forward_flops(channels)``, built on ``layers.block_flops``.)"""

from __future__ import annotations

import os

# Dense peak FLOP/s per chip by compute dtype (NVIDIA: tensor cores, float32 as TF32).
PEAK_FLOPS = {
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12},
}


def peak_flops(device, dtype: str) -> float | None:
    """Peak dense FLOP/s of one device for ``dtype``, or None if unknown. CPUs: cores x clock x
    32 float32 FMAs per cycle (two AVX-512 units), an upper bound."""
    kind = getattr(device, "device_kind", str(device))
    for name, rates in PEAK_FLOPS.items():
        if name.lower() in kind.lower():
            return rates.get(dtype)
    if getattr(device, "platform", "") == "cpu":
        try:
            mhz = max(float(line.split(":")[1]) for line in open("/proc/cpuinfo") if line.startswith("cpu MHz"))
        except (OSError, ValueError):
            return None
        return (len(os.sched_getaffinity(0))) * mhz * 1e6 * 64
    return None
