"""The downstream protocol grid for stmem-benchmark: ``grid:<dataset>:<task>``,
``<dataset>:<task>`` naming a run config of this folder and its argument (default ``ptbxl:st_mem``).

``config.run`` is that run config (override any field: ``--config.run.data.dir=/data/ptbxl
--config.run.train.epochs=50``); ``config.grid`` lists what varies (tuples:
``--config.grid.seeds='(0,1,2,3,4)'``). ``grid.methods`` entries are ``NAME=<pre-trained weights>``
(a stmem-pretrain workdir, a saved model directory or a .pth file).
"""

import os

import ml_collections

from stmem_jax.train.config import load_config


def get_config(arg: str = "ptbxl:st_mem"):
    dataset, _, task = (arg or "ptbxl:st_mem").partition(":")
    config = ml_collections.ConfigDict()
    config.run = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{dataset}.py"), task)
    config.grid = ml_collections.ConfigDict(dict(
        tasks=(),                                  # empty: run.data.task
        methods=(),                                # ("ST-MEM=runs/pretrain", "MTAE=runs/mtae")
        modes=("finetune", "linprobe", "scratch"),
        fractions=(0.01, 0.05, 1.0),
        leads=("12", "limb", "1"),
        seeds=(0, 1, 2),
    ))
    return config
