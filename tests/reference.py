"""Float64 NumPy reference of ST-MEM and of the MTAE / MLAE baselines, written from the spec
independently of the package.

Parameters are read from the Flax variable tree by name; everything else (patching, tables,
masking, attention, decoding, loss) is computed here with explicit loops where that is clearer.
"""

import math

import numpy as np
from scipy.special import erf


def f64(tree):
    if isinstance(tree, dict):
        return {k: f64(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def layer_norm(x, p, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def dense(x, p):
    return x @ p["kernel"] + p["bias"]


def gelu(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention(x, p, heads):
    length = x.shape[0]
    qkv = dense(x, p["qkv"])
    inner = heads * 64
    q, k, v = qkv[:, :inner], qkv[:, inner:2 * inner], qkv[:, 2 * inner:]
    outs = []
    for h in range(heads):
        qh, kh, vh = (t[:, h * 64:(h + 1) * 64] for t in (q, k, v))
        logits = qh @ kh.T / 8.0
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        outs.append(weights @ vh)
    assert outs[0].shape == (length, 64)
    return dense(np.concatenate(outs, axis=-1), p["out"])


def blocks(x, p, depth, heads):
    """x: (L, W), one sequence."""
    for i in range(depth):
        b = p[f"block_{i}"]
        x = x + attention(layer_norm(x, b["attn_norm"], 1e-5), b["attn"], heads)
        h = layer_norm(x, b["mlp_norm"], 1e-5)
        x = x + dense(gelu(dense(h, b["mlp"]["fc1"])), b["mlp"]["fc2"])
    return x


def table(n, width):
    """N + 2 rows: zeros, positions 0..N-1, zeros."""
    rows = np.zeros((n + 2, width))
    half = width // 2
    for t in range(n):
        for k in range(half):
            omega = 1.0 / 10000 ** (k / half)
            rows[t + 1, k] = math.sin(t * omega)
            rows[t + 1, half + k] = math.cos(t * omega)
    return rows


def embed_patches(series, enc, patch_size):
    b, c, t = series.shape
    patches = series.reshape(b, c, t // patch_size, patch_size)
    pe = enc["patch_embed"]
    x = layer_norm(patches, pe["norm_in"], 1e-5)
    return patches, layer_norm(dense(x, pe["proj"]), pe["norm_out"], 1e-5)


def pretrain_forward(params, series, noise, cfg, mask_ratio=0.75, lead_ids=None):
    """Returns (loss, pred (B, C, N, P), mask (B, C, N)) of the ST-MEM pre-training model."""
    params, series, noise = f64(params), np.asarray(series, np.float64), np.asarray(noise)
    enc = params["encoder"]
    batch, channels, _ = series.shape
    lead_ids = list(range(channels)) if lead_ids is None else lead_ids
    patches, x = embed_patches(series, enc, cfg["patch_size"])
    n = x.shape[2]
    pos = table(n, cfg["width"])
    x = x + pos[1:n + 1]
    keep = int(n * (1 - mask_ratio))
    mask = np.ones((batch, channels, n))
    kept_ids = np.zeros((batch, channels, keep), dtype=int)
    pred = np.zeros(patches.shape)
    dpos = table(n, cfg["decoder_width"])
    for bi in range(batch):
        sequence = []
        for ci in range(channels):
            order = sorted(range(n), key=lambda j: noise[bi, ci, j])
            kept_ids[bi, ci] = order[:keep]
            mask[bi, ci, order[:keep]] = 0
            lead = [enc["sep_embedding"] + pos[0]] + [x[bi, ci, j] for j in order[:keep]] + \
                   [enc["sep_embedding"] + pos[n + 1]]
            sequence += [tok + enc["lead_embeddings"][lead_ids[ci]] for tok in lead]
        latent = blocks(np.stack(sequence), enc["blocks"], cfg["depth"], cfg["heads"])
        latent = layer_norm(latent, enc["norm"], 1e-5)
        projected = dense(latent, params["decoder_embed"])
        per_lead = keep + 2
        for ci in range(channels):
            lead = projected[ci * per_lead:(ci + 1) * per_lead]
            full = np.tile(params["mask_token"], (n, 1))
            for slot, j in enumerate(kept_ids[bi, ci]):
                full[j] = lead[1 + slot]
            seq = np.concatenate([lead[:1] + dpos[0], full + dpos[1:n + 1], lead[-1:] + dpos[n + 1]])
            out = blocks(seq, params["decoder"], cfg["decoder_depth"], cfg["decoder_heads"])
            out = dense(layer_norm(out, params["decoder_norm"], 1e-6), params["decoder_head"])
            pred[bi, ci] = out[1:-1]
    mean = patches.mean(-1, keepdims=True)
    var = patches.var(-1, ddof=1, keepdims=True)
    target = (patches - mean) / np.sqrt(var + 1e-6)
    per_patch = ((pred - target) ** 2).mean(-1)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


def classifier_forward(params, series, cfg, lead_ids=None):
    """Pooled features (B, W), or logits when the tree has a head, of the classification encoder."""
    params, series = f64(params), np.asarray(series, np.float64)
    enc = params["encoder"]
    batch, channels, _ = series.shape
    lead_ids = list(range(channels)) if lead_ids is None else lead_ids
    _, x = embed_patches(series, enc, cfg["patch_size"])
    n = x.shape[2]
    pos = enc["pos_embedding"]
    outputs = []
    for bi in range(batch):
        sequence = []
        for ci in range(channels):
            tokens = [enc["sep_embedding"] + pos[0]] + list(x[bi, ci] + pos[1:n + 1]) + \
                     [enc["sep_embedding"] + pos[n + 1]]
            sequence += [tok + enc["lead_embeddings"][lead_ids[ci]] for tok in tokens]
        out = blocks(np.stack(sequence), enc["blocks"], cfg["depth"], cfg["heads"])
        out = out.reshape(channels, n + 2, -1)[:, 1:-1].mean(axis=(0, 1))
        outputs.append(layer_norm(out, enc["norm"], 1e-5))
    features = np.stack(outputs)
    return dense(features, params["head"]) if "head" in params else features


def tokenize(series, token_axis, patch_size=75):
    """(B, C, T) -> (B, L, F): MTAE token n holds samples n*P .. n*P+P-1 of every lead, feature
    p * C + c; MLAE token c is lead c."""
    if token_axis == "lead":
        return series.copy()
    b, c, t = series.shape
    n = t // patch_size
    tokens = np.zeros((b, n, patch_size * c))
    for j in range(n):
        for p in range(patch_size):
            for ci in range(c):
                tokens[:, j, p * c + ci] = series[:, ci, j * patch_size + p]
    return tokens


def baseline_pretrain_forward(params, series, noise, cfg, token_axis, mask_ratio=0.75):
    """Returns (loss, pred (B, L, F), mask (B, L)) of the MTAE (``token_axis='time'``) or MLAE
    (``'lead'``) pre-training model: one sequence of L tokens with a CLS token, one decoder."""
    params, series, noise = f64(params), np.asarray(series, np.float64), np.asarray(noise)
    enc = params["encoder"]
    tokens = tokenize(series, token_axis, cfg["patch_size"])
    batch, length, _ = tokens.shape
    pe = enc["patch_embed"]
    x = layer_norm(dense(layer_norm(tokens, pe["norm_in"], 1e-5), pe["proj"]), pe["norm_out"], 1e-5)
    pos = table(length, cfg["width"])[:length + 1]  # row 0 (CLS) zero, then positions 0..L-1
    dpos = table(length, cfg["decoder_width"])[:length + 1]
    x = x + pos[1:]
    keep = int(length * (1 - mask_ratio))
    mask = np.ones((batch, length))
    pred = np.zeros(tokens.shape)
    for bi in range(batch):
        order = sorted(range(length), key=lambda j: noise[bi, j])[:keep]
        mask[bi, order] = 0
        sequence = np.stack([enc["cls_token"] + pos[0]] + [x[bi, j] for j in order])
        latent = layer_norm(blocks(sequence, enc["blocks"], cfg["depth"], cfg["heads"]), enc["norm"], 1e-5)
        projected = dense(latent, params["decoder_embed"])
        full = np.tile(params["mask_token"], (length, 1))
        for slot, j in enumerate(order):
            full[j] = projected[1 + slot]
        seq = np.concatenate([projected[:1] + dpos[0], full + dpos[1:]])
        out = blocks(seq, params["decoder"], cfg["decoder_depth"], cfg["decoder_heads"])
        pred[bi] = dense(layer_norm(out, params["decoder_norm"], 1e-6), params["decoder_head"])[1:]
    mean = tokens.mean(-1, keepdims=True)
    var = tokens.var(-1, ddof=1, keepdims=True)
    target = (tokens - mean) / np.sqrt(var + 1e-6)
    per_token = ((pred - target) ** 2).mean(-1)
    return (per_token * mask).sum() / mask.sum(), pred, mask
