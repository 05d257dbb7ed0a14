"""ST-MEM pre-training configs: ``configs/pretrain/st_mem.py:<preset>``.

Presets: ``vit_base`` (the paper's recipe), ``vit_small``, ``tiny`` (CPU demo, minutes). The fields
and their defaults are ``stmem_jax.train.config.pretraining``. With ``data.dir`` empty,
stmem-pretrain prepares the built-in synthetic dataset. Every field can be overridden:
``--config.train.batch_size=512 --config.model.kind=mtae``.

The paper's pre-training (Chapman-Shaoxing and Ningbo from Challenge 2021 v1.0.3, and CODE-15),
each source prepared into its own folder, then read together (one epoch = one pass over the union):

    stmem-prepare challenge2021 --input /data/challenge2021 --output /data/shards/chapman --subsets chapman_shaoxing
    stmem-prepare challenge2021 --input /data/challenge2021 --output /data/shards/ningbo --subsets ningbo
    stmem-prepare code15 --input /data/code15 --output /data/shards/code15
    stmem-pretrain --config configs/pretrain/st_mem.py:vit_base --workdir runs/vit_base \
        --config.data.dir=/data/shards/chapman,/data/shards/ningbo,/data/shards/code15

The optimiser decays Dense kernels only (``train.weight_decay_on="kernels"``, weight decay 0.05);
the public code decays every parameter at 0.01: add ``--config.train.weight_decay_on=all
--config.train.weight_decay=0.01`` to match it. ``data.weights`` (e.g. ``1,1,2``) changes each
folder's share.
"""

from stmem_jax.train.config import pretraining

PRESETS = ("vit_base", "vit_small", "tiny")


def get_config(arg: str = "vit_base"):
    preset = arg or "vit_base"
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}: use {', '.join(PRESETS)}")
    config = pretraining(preset)
    if preset == "tiny":
        config.model.dtype = "float32"
        config.train.update(batch_size=64, epochs=30, warmup_epochs=3, base_lr=1e-3)
        config.data.synthetic_records = 1_000
        config.checkpoint.every_steps = 200
        config.eval.update(every_steps=200, batch_size=64)
        config.log.update(every_steps=20, figure_every_steps=200)
    return config
