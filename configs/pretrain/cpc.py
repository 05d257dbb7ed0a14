"""CPC pre-training configs: ``cpc:<arg>`` (250hz | 100hz | tiny).

CPC for ECG, the "4FC+2LSTM+2FC" network of Mehari and Strodthoff (2022, "Self-supervised
representation learning from 12-lead ECG data"; facts in the project's spec, ``baselines.md``):
4 pointwise layers 12 -> 512 with BatchNorm and ReLU (one latent per sample), a 2-layer LSTM of
512 units, a Dense(512 -> 512) prediction of the latent 12 steps ahead against 128 negatives of
the same sequence, no temperature (``stmem_jax.methods.cpc``). Sizes: ``model.width`` (512),
``model.depth`` (LSTM layers, 2), ``model.encoder_layers`` (4), ``model.horizon`` (12),
``model.negatives`` (128); ``model.preset`` tiny makes it 32 wide with 32 negatives.

- ``100hz``: the paper's setting [fact]: 10 s crops at 100 Hz (``data.sample_rate=100``,
  ``data.crop_samples=1000``), no augmentation, AdamW lr 1e-4 and weight decay 1e-3 on every
  parameter, batch 32.
- ``250hz``: the same network and optimiser on our recipe's 2250-sample crops at the stored
  250 Hz [choice, the spec's 250 Hz row].
- ``tiny``: a CPU run of minutes on the built-in synthetic data (width 32, 1000-sample crops at
  100 Hz, batch 16).

Choices [choice]: float32 (LSTM recurrences over 1000-2250 steps), the peak learning rate set
directly (``train.lr``, no batch scaling), Adam's b2 0.999 (PyTorch's), the epochs and warm-up of
the ST-MEM recipe (``pretraining()``: the paper's tables compare methods at one budget). The
pipeline z-scores each crop over leads and time, where the original normalises each lead with
fixed dataset statistics. BatchNorm normalises with the global batch's statistics, so a step is
never split into micro-batches (``train.grad_accum_steps`` must stay 0 or 1). The running
statistics (the method's extra state, momentum 0.9) become the exported encoder's frozen
statistics; the classifier head's BatchNorms are learned scales and offsets over fixed
statistics (parameters only downstream).

    stmem-pretrain --config cpc:100hz --workdir runs/cpc100 --config.data.dir=...
"""

from stmem_jax.train.config import pretraining

ARGS = ("250hz", "100hz", "tiny")


def get_config(arg: str = "100hz"):
    arg = arg or "100hz"
    if arg not in ARGS:
        raise ValueError(f"unknown cpc config {arg!r}: use {', '.join(ARGS)}")
    config = pretraining("tiny" if arg == "tiny" else "vit_base", "cpc")
    config.model.dtype = "float32"
    config.data.augment = False
    config.train.update(batch_size=32, lr=1e-4, weight_decay=1e-3, weight_decay_on="all", b2=0.999)
    if arg in ("100hz", "tiny"):
        config.data.update(sample_rate=100, crop_samples=1000)
    if arg == "tiny":
        config.train.update(batch_size=16, epochs=2, warmup_epochs=0, lr=1e-3)
        config.data.synthetic_records = 200
    return config
