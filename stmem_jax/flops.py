"""Analytic FLOP counts of the pre-training and fine-tuning steps and peak rates of common accelerators (for MFU)."""

from __future__ import annotations

import os

from stmem_jax.baselines import BaselineClassifier, BaselineMAE
from stmem_jax.layers import HEAD_DIM
from stmem_jax.ops import num_kept
from stmem_jax.st_mem import STMEM, STMEMClassifier

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


def _blocks(tokens: int, sequences: int, width: int, heads: int, mlp_dim: int, depth: int) -> float:
    """Forward FLOPs of ``depth`` blocks over ``sequences`` sequences of ``tokens`` tokens."""
    inner = heads * HEAD_DIM
    dense = 2 * tokens * (width * 3 * inner + inner * width + 2 * width * mlp_dim)
    attention = 4 * tokens * tokens * inner  # q k^T and weights @ v
    return depth * sequences * (dense + attention)


def encoder_tokens(model, channels: int, mask_ratio: float = 0.75) -> int:
    """Tokens of one example's encoder sequence: a classifier's sees every patch of the ``channels``
    leads, a pre-training model's the patches that ``mask_ratio`` keeps (with each lead's SEP tokens,
    or the class token)."""
    if isinstance(model, STMEMClassifier):
        return channels * (model.num_patches + 2)
    if isinstance(model, BaselineClassifier):
        return model.num_tokens + 1
    if isinstance(model, STMEM):
        return channels * (num_kept(model.num_patches, mask_ratio) + 2)
    if isinstance(model, BaselineMAE):
        return num_kept(model.num_tokens, mask_ratio) + 1
    raise TypeError(f"no token count for {type(model).__name__}")


def activation(model, channels: int, mask_ratio: float = 0.75) -> int:
    """Elements of one example's activation (one block's output): the encoder's tokens x its width,
    plus for a pre-training model the decoder's, every patch of every lead x the decoder width."""
    elements = encoder_tokens(model, channels, mask_ratio) * model.width
    if isinstance(model, STMEM):
        elements += channels * (model.num_patches + 2) * model.decoder_width
    elif isinstance(model, BaselineMAE):
        elements += (model.num_tokens + 1) * model.decoder_width
    return elements


def _encoder(model, channels: int, mask_ratio: float) -> float:
    """Forward FLOPs of the encoder's blocks over one example's sequence."""
    return _blocks(encoder_tokens(model, channels, mask_ratio), 1, model.width, model.heads, model.mlp_dim,
                   model.depth)


def forward_flops(model, channels: int, mask_ratio: float = 0.75) -> float:
    """Forward FLOPs per example of a pre-training model or a classifier (matmuls only; a training
    step is ~3x). A classifier's encoder sees every patch of the ``channels`` leads."""
    if isinstance(model, STMEMClassifier):
        n = model.num_patches
        return float(2 * channels * n * model.patch_size * model.width + 2 * model.width * model.num_classes
                     + _encoder(model, channels, mask_ratio))
    if isinstance(model, BaselineClassifier):
        tokens = model.num_tokens
        features = model.patch_size * channels if model.token_axis == "time" else model.seq_len
        return float(2 * tokens * features * model.width + 2 * model.width * model.num_classes
                     + _encoder(model, channels, mask_ratio))
    if isinstance(model, STMEM):
        n, kept = model.num_patches, num_kept(model.num_patches, mask_ratio)
        embed = 2 * channels * n * model.patch_size * model.width
        encoder = _encoder(model, channels, mask_ratio)
        tokens_d = channels * (n + 2)
        decoder = 2 * channels * (kept + 2) * model.width * model.decoder_width + \
            _blocks(n + 2, channels, model.decoder_width, model.decoder_heads, 4 * model.decoder_width,
                    model.decoder_depth) + 2 * tokens_d * model.decoder_width * model.patch_size
        return float(embed + encoder + decoder)
    if isinstance(model, BaselineMAE):
        tokens, features = model.num_tokens, model.patch_size * channels if model.token_axis == "time" else model.seq_len
        kept = num_kept(tokens, mask_ratio)
        embed = 2 * tokens * features * model.width
        encoder = _encoder(model, channels, mask_ratio)
        decoder = 2 * (kept + 1) * model.width * model.decoder_width + \
            _blocks(tokens + 1, 1, model.decoder_width, model.decoder_heads, 4 * model.decoder_width,
                    model.decoder_depth) + 2 * (tokens + 1) * model.decoder_width * features
        return float(embed + encoder + decoder)
    raise TypeError(f"no FLOP count for {type(model).__name__}")


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
