"""CPSC2018 (9 classes): ``cpsc2018:<single|multi>``.

``single`` (default): task ``cpsc2018_single``, the records with exactly one class (the ST-MEM
protocol); ``multi``: task ``cpsc2018``, multi-label. ``data.dir`` is a stmem-prepare output of the
Challenge 2021 release (``stmem-prepare challenge2021 --subsets cpsc_2018``) or of the original
release (``stmem-prepare cpsc2018``).

The recipe is the authors' (``config.recipe``; our departures: ``--config.recipe=stmem_jax``); the
batch, epochs and warm-up are ours, the authors' YAML holding placeholders (``train.config.downstream``).
"""

from stmem_jax.train.config import downstream

TASKS = {"single": "cpsc2018_single", "multi": "cpsc2018"}


def get_config(arg: str = "single"):
    variant = arg or "single"
    if variant not in TASKS:
        raise ValueError(f"unknown CPSC2018 variant {variant!r}: use single or multi")
    config = downstream()
    config.data.task = TASKS[variant]
    return config
