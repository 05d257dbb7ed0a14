"""The downstream protocol grid for stmem-benchmark: ``grid:<dataset>:<task>``,
``<dataset>:<task>`` naming a run config of this folder and its argument (default ``ptbxl:st_mem``).

``config.run`` is that run config (override any field: ``--config.run.data.dir=/data/ptbxl
--config.run.train.epochs=50``); ``config.grid`` lists what varies (tuples:
``--config.grid.seeds='(0,1,2,3,4)'``). ``grid.methods`` entries are ``NAME=<pre-trained weights>``
(a stmem-pretrain workdir, a saved model directory, a .pth file or ``random:<method or path>``).
``grid.tasks`` entries ``TASK=DIR`` give a task its own prepared folder, so that datasets sit side
by side in the tables: ``'("st_mem=/data/ptbxl","cpsc2018_single=/data/cpsc2018")'``.
``grid.reference=paper`` (or the command's ``--reference paper``) prints the ST-MEM paper's numbers
beside ours in ``results.md`` (``stmem_jax.paper_results``).
"""

import os

import ml_collections

from stmem_jax.train.config import load_config

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = sorted(name[:-3] for name in os.listdir(HERE)
                  if name.endswith(".py") and name[0] != "_" and name != "grid.py")


def get_config(arg: str = "ptbxl:st_mem"):
    dataset, _, task = (arg or "ptbxl:st_mem").partition(":")
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset config {dataset!r} of grid:<dataset>:<task>: use {', '.join(DATASETS)}")
    config = ml_collections.ConfigDict()
    config.run = load_config(os.path.join(HERE, f"{dataset}.py"), task)
    config.grid = ml_collections.ConfigDict(dict(
        tasks=(),                                  # TASK or TASK=DIR (its own prepared folder); empty: run.data.task
        methods=(),                                # NAME=init: ("ST-MEM=runs/pretrain", "Random=random:st_mem")
        modes=("finetune", "linprobe", "scratch"),
        fractions=(0.01, 0.05, 1.0),
        leads=("12", "limb", "1"),
        seeds=(0, 1, 2),
        reference="",                              # paper (or --reference paper): the paper's numbers and our gaps
    ))
    return config
