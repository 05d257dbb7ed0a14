"""PhysioNet/CinC Challenge 2017: task ``af2017`` (N, A, O, ~), one lead (the handheld lead, lead I).

    stmem-prepare physionet2017 --input <training2017> --output <dir>
    stmem-finetune --config physionet2017 --config.data.dir=<dir> ...

The recipe is the authors' (``config.recipe``; our departures: ``--config.recipe=stmem_jax``); the
batch, epochs and warm-up are ours, the authors' YAML holding placeholders (``train.config.downstream``).
"""

from stmem_jax.train.config import downstream


def get_config(arg: str = ""):
    if arg:
        raise ValueError(f"physionet2017 takes no argument (its one task is af2017), got {arg!r}")
    config = downstream()
    config.data.task = "af2017"
    config.data.leads = "1"
    return config
