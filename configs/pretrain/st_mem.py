"""ST-MEM pre-training configs: ``configs/pretrain/st_mem.py:<preset>``.

Presets: ``vit_base`` (the paper's recipe), ``vit_small``, ``tiny`` (CPU demo, minutes). The fields
and their defaults are ``stmem_jax.train.config.pretraining``. With ``data.dir`` empty,
stmem-pretrain prepares the built-in synthetic dataset. Every field can be overridden:
``--config.train.batch_size=512 --config.model.kind=mtae``.
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
