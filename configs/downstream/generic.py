"""Any prepared dataset with labels: ``generic:<task>``, the task as named in
its manifest.json (e.g. ``label`` for ``stmem-prepare wfdb``); empty: the dataset's only task.

    stmem-finetune --config generic:label --config.data.dir=<dir> ...

The recipe is the authors' (``config.recipe``; our departures: ``--config.recipe=stmem_jax``); the
batch, epochs and warm-up are ours, the authors' YAML holding placeholders (``train.config.downstream``).
"""

from stmem_jax.train.config import downstream


def get_config(arg: str = ""):
    config = downstream()
    config.data.task = arg
    return config
