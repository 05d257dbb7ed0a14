"""ST-MEM pre-training configs: ``configs/pretrain/st_mem.py:<preset>``.

Presets: ``vit_base`` (the paper's recipe), ``vit_small``, ``tiny`` (CPU demo, minutes).
With ``data.dir`` empty the run generates and prepares the built-in synthetic dataset.
Every field can be overridden: ``--config.train.batch_size=512 --config.model.kind=mtae``.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config(arg: str = "vit_base") -> ml_collections.ConfigDict:
    preset = arg or "vit_base"
    if preset not in ("vit_base", "vit_small", "tiny"):
        raise ValueError(f"unknown preset {preset!r}: use vit_base, vit_small or tiny")
    config = ml_collections.ConfigDict()

    config.model = ml_collections.ConfigDict(dict(
        kind="st_mem",            # st_mem | mtae | mlae
        preset=preset,
        dtype="bfloat16" if preset != "tiny" else "float32",
        mask_ratio=0.75,
        norm_pix_loss=True,
        remat=False,              # recompute activations in the backward pass: less memory, ~1/3 more compute
    ))
    for field in ("width", "depth", "heads", "mlp_dim", "decoder_width", "decoder_depth", "decoder_heads"):
        config.model[field] = placeholder(int)  # set to override the preset

    config.data = ml_collections.ConfigDict(dict(
        dir="",                    # a stmem-prepare output; empty: built-in synthetic data in <workdir>/data
        split="train",
        val_split="validation",
        leads="12",
        crop_samples=2250,
        bandpass=False,            # filter on the fly (for shards prepared with --no-filter)
        shuffle_buffer=10_000,
        synthetic_records=2_000,
        synthetic_seed=0,
        workers=2,
    ))

    config.train = ml_collections.ConfigDict(dict(
        seed=0,
        batch_size=512,            # global, per optimizer step
        grad_accum_steps=1,        # micro-batches per step (memory), same result as one big batch
        epochs=800,
        num_steps=0,               # > 0 overrides epochs
        max_steps_per_run=0,       # > 0: stop (with a checkpoint) after this many steps; rerun to go on
        warmup_epochs=40,
        warmup_steps=-1,           # >= 0 overrides warmup_epochs
        base_lr=1.5e-4,            # x global batch / 256
        lr=0.0,                    # > 0 sets the peak learning rate directly
        min_lr=0.0,
        weight_decay=0.05,
        b1=0.9,
        b2=0.95,
        clip_norm=0.0,
    ))
    config.mesh = ml_collections.ConfigDict(dict(fsdp=1))  # > 1 shards parameters over that many devices
    config.checkpoint = ml_collections.ConfigDict(dict(every_steps=1000, keep=3, asynchronous=True))
    config.eval = ml_collections.ConfigDict(dict(every_steps=5000, batch_size=256))
    config.log = ml_collections.ConfigDict(dict(every_steps=50, figure_every_steps=5000))
    config.distributed = ml_collections.ConfigDict(dict(
        coordinator_address="", num_processes=1, process_id=0,
        auto=False,                # jax.distributed.initialize() auto-detection (TPU pods, SLURM)
    ))

    if preset == "tiny":
        config.train.update(batch_size=64, epochs=30, warmup_epochs=3, base_lr=1e-3)
        config.data.synthetic_records = 1_000
        config.checkpoint.every_steps = 200
        config.eval.update(every_steps=200, batch_size=64)
        config.log.update(every_steps=20, figure_every_steps=200)
    return config
