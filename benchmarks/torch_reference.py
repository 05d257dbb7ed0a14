"""The same ST-MEM (and CPC) training steps in PyTorch, timed on the same machine: the reference for
``train_throughput.py``.

    pip install torch==2.13.0   # the CPU build; or: pip install -e '.[torch]'
    python benchmarks/torch_reference.py [--method st_mem|cpc] [--step pretrain|finetune]
                                         [--presets vit_small,vit_base] [--batch 16] [--threads 2]
                                         [--crop 2250]

Plain PyTorch models with ST-MEM's shapes and FLOPs and an AdamW step, float32 on the CPU, in eager
mode as the public code runs. ``--step pretrain``: patch embedding, SEP tokens, 75% of the patches
of every lead masked, pre-norm encoder blocks with exact GELU over the kept tokens, the lead-wise
shared decoder, per-patch normalised loss on masked patches. ``--step finetune``: the same encoder
on every patch of the 12 leads (``nn.MultiheadAttention`` without weights, so PyTorch's fused
``scaled_dot_product_attention``), drop-path up to 0.1, mean pooling, LayerNorm, a 5-class head
and cross-entropy. ``--method cpc`` (pre-training only): CPC's network as ``stmem_jax.methods.cpc``
builds it (kernel-1 ``Conv1d`` + ``BatchNorm1d`` + ReLU layers, ``nn.LSTM``, a bias-free
prediction, 128 negatives of the same sequence drawn each step, the same loss), the tiny preset
32 wide with 32 negatives, the others the paper's 512 / 128; ``--crop`` samples per example
(2250: 250 Hz, 1000: 10 s at 100 Hz); AdamW as the cpc configs (lr 1e-4, weight decay 1e-3).
Prints the same columns as ``train_throughput.py``, with this process's peak RSS.
"""

import argparse
import resource
import time

import torch
from torch import nn

from stmem_jax.models import PRESETS, create_model

LEADS, PATCHES, PATCH = 12, 30, 75


def blocks(width: int, heads: int, mlp: int, depth: int) -> nn.ModuleList:
    return nn.ModuleList(nn.TransformerEncoderLayer(width, heads, mlp, dropout=0.0, activation="gelu",
                                                    batch_first=True, norm_first=True) for _ in range(depth))


class STMEM(nn.Module):
    def __init__(self, width, depth, heads, mlp_dim, decoder_width, decoder_depth, decoder_heads):
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(PATCH), nn.Linear(PATCH, width), nn.LayerNorm(width))
        self.sep = nn.Parameter(torch.zeros(width))
        self.leads = nn.Parameter(torch.zeros(LEADS, width))
        self.encoder, self.norm = blocks(width, heads, mlp_dim, depth), nn.LayerNorm(width)
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(decoder_width))
        self.decoder = blocks(decoder_width, decoder_heads, 4 * decoder_width, decoder_depth)
        self.decoder_norm, self.head = nn.LayerNorm(decoder_width), nn.Linear(decoder_width, PATCH)

    def forward(self, series: torch.Tensor, keep: int) -> torch.Tensor:
        batch = series.shape[0]
        patches = series.reshape(batch, LEADS, PATCHES, PATCH)
        tokens = self.embed(patches)
        width = tokens.shape[-1]
        shuffle = torch.rand(batch, LEADS, PATCHES).argsort(-1)
        restore = shuffle.argsort(-1)
        kept = torch.gather(tokens, 2, shuffle[..., :keep, None].expand(-1, -1, -1, width))
        sep = self.sep.expand(batch, LEADS, 1, width)
        x = (torch.cat([sep, kept, sep], 2) + self.leads[None, :, None]).reshape(batch, -1, width)
        for block in self.encoder:
            x = block(x)
        x = self.decoder_embed(self.norm(x)).reshape(batch, LEADS, keep + 2, -1)
        dw = x.shape[-1]
        body = torch.cat([x[:, :, 1:-1], self.mask_token.expand(batch, LEADS, PATCHES - keep, dw)], 2)
        body = torch.gather(body, 2, restore[..., None].expand(-1, -1, -1, dw))
        x = torch.cat([x[:, :, :1], body, x[:, :, -1:]], 2).reshape(batch * LEADS, PATCHES + 2, dw)
        for block in self.decoder:
            x = block(x)
        pred = self.head(self.decoder_norm(x)).reshape(batch, LEADS, PATCHES + 2, PATCH)[:, :, 1:-1]
        target = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
        mask = (restore >= keep).float()
        return (((pred - target) ** 2).mean(-1) * mask).sum() / mask.sum()


class DropPathBlock(nn.Module):
    """A pre-norm encoder block whose two residual branches are dropped per example (drop-path)."""

    def __init__(self, width, heads, mlp_dim, rate):
        super().__init__()
        self.rate = rate
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, width))

    def drop(self, x):
        if not self.training or self.rate == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1) >= self.rate
        return x * keep / (1.0 - self.rate)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])
        return x + self.drop(self.mlp(self.norm2(x)))


class Classifier(nn.Module):
    def __init__(self, width, depth, heads, mlp_dim, num_classes=5, drop_path=0.1, **_decoder):
        super().__init__()
        self.embed = nn.Sequential(nn.LayerNorm(PATCH), nn.Linear(PATCH, width), nn.LayerNorm(width))
        self.sep = nn.Parameter(torch.zeros(width))
        self.leads = nn.Parameter(torch.zeros(LEADS, width))
        self.pos = nn.Parameter(torch.zeros(PATCHES + 2, width))
        self.blocks = nn.ModuleList(DropPathBlock(width, heads, mlp_dim, drop_path * i / max(depth - 1, 1))
                                    for i in range(depth))
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, num_classes)

    def forward(self, series: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = series.shape[0]
        tokens = self.embed(series.reshape(batch, LEADS, PATCHES, PATCH))
        sep = self.sep.expand(batch, LEADS, 1, tokens.shape[-1])
        x = torch.cat([sep, tokens, sep], 2) + self.pos + self.leads[None, :, None]
        x = x.reshape(batch, LEADS * (PATCHES + 2), -1)
        for block in self.blocks:
            x = block(x)
        x = x.reshape(batch, LEADS, PATCHES + 2, -1)[:, :, 1:-1].mean((1, 2))
        return nn.functional.cross_entropy(self.head(self.norm(x)), labels)


class CPC(nn.Module):
    """CPC's pre-training network and loss (``stmem_jax.methods.cpc``)."""

    def __init__(self, width, depth, encoder_layers, horizon, negatives):
        super().__init__()
        layers, features = [], LEADS
        for _ in range(encoder_layers):
            layers += [nn.Conv1d(features, width, 1, bias=False), nn.BatchNorm1d(width), nn.ReLU()]
            features = width
        self.encoder = nn.Sequential(*layers)
        self.lstm = nn.LSTM(width, width, num_layers=depth, batch_first=True)
        self.predictor = nn.Linear(width, width, bias=False)
        self.horizon, self.negatives = horizon, negatives

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        z = self.encoder(series).transpose(1, 2)  # (B, S, W)
        pred = self.predictor(self.lstm(z)[0])
        batch, samples, _ = z.shape
        steps = samples - self.horizon
        drawn = torch.randint(0, samples - 1, (batch, steps, self.negatives))
        positives = torch.arange(steps) + self.horizon
        drawn = drawn + (drawn >= positives[None, :, None]).long()  # never the positive
        table = torch.einsum("btd,bsd->bts", pred[:, :steps], z)
        index = torch.cat([positives[None, :, None].expand(batch, steps, 1), drawn], -1)
        scores = torch.gather(table, 2, index)
        return (torch.logsumexp(scores, -1) - scores[..., 0]).sum(1).mean()


def cpc_sizes(preset: str) -> dict:
    from stmem_jax.methods.cpc import DEFAULTS, TINY

    return TINY if preset == "tiny" else DEFAULTS


def st_mem_step(kind: str, preset: str, batch: int, crop: int):
    """(model, inputs, loss, AdamW settings, the JAX model whose FLOPs it has) of ST-MEM's step."""
    del crop
    series = torch.randn(batch, LEADS, PATCHES * PATCH)
    if kind == "pretrain":
        model = STMEM(**PRESETS[preset])
        inputs, loss, jax_model = (series,), lambda *x: model(*x, keep=int(PATCHES * 0.25)), \
            create_model("st_mem", preset)
    else:
        model = Classifier(**PRESETS[preset])
        inputs, loss = (series, torch.arange(batch) % 5), model
        jax_model = create_model("st_mem_classifier", preset, num_classes=5)
    return model, inputs, loss, dict(lr=1e-4, betas=(0.9, 0.95), weight_decay=0.05), jax_model


def cpc_step(kind: str, preset: str, batch: int, crop: int):
    """The same for CPC's pre-training (its cpc configs' AdamW)."""
    if kind != "pretrain":
        raise SystemExit("torch_reference.py: CPC times its pre-training step only (--step pretrain)")
    model = CPC(**cpc_sizes(preset))
    return model, (torch.randn(batch, LEADS, crop),), model, dict(lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-3), \
        create_model("cpc", "tiny", seq_len=crop, **cpc_sizes(preset))  # the sizes given: any preset name


STEPS = {"st_mem": st_mem_step, "cpc": cpc_step}


def measure(kind: str, preset: str, batch: int, steps: int, method: str = "st_mem", crop: int = 2250
            ) -> tuple[float, float]:
    """(seconds per step, model FLOPs per step: 3 x the JAX model's forward)."""
    torch.manual_seed(0)
    model, inputs, loss, settings, jax_model = STEPS[method](kind, preset, batch, crop)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **settings)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss(*inputs).backward()
        optimizer.step()

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps, 3 * jax_model.forward_flops(12) * batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="st_mem", choices=sorted(STEPS))
    parser.add_argument("--step", default="pretrain", choices=("pretrain", "finetune"))
    parser.add_argument("--presets", default="vit_small,vit_base")
    parser.add_argument("--crop", type=int, default=2250, help="samples per example (CPC; ST-MEM: 2250)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU; {args.method} {args.step} step")
    print(f"{'preset':<10} {'batch':>5} {'step ms':>9} {'examples/s':>11} {'TFLOP/s':>8} {'peak RSS GB':>11}")
    for preset in args.presets.split(","):
        seconds, flops = measure(args.step, preset, args.batch, args.steps, args.method, args.crop)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        print(f"{preset:<10} {args.batch:>5} {1000 * seconds:>9.1f} {args.batch / seconds:>11.2f} "
              f"{flops / seconds / 1e12:>8.3f} {rss:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
