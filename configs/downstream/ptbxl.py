"""PTB-XL downstream tasks: ``ptbxl:<task>``.

``st_mem`` (default): the ST-MEM protocol, superdiagnostic records with exactly one superclass as a
5-class single-label task, on PTB-XL prepared with the default split scheme (strat_fold 1-7/8/9-10):
    stmem-prepare ptbxl --input <ptb-xl root> --output <dir>
``all``, ``diagnostic``, ``subdiagnostic``, ``superdiagnostic``, ``form``, ``rhythm``: the
multi-label benchmark of Strodthoff et al. (folds 1-8/9/10):
    stmem-prepare ptbxl --input <ptb-xl root> --output <dir> --split-scheme benchmark
With ``data.dir`` empty the run uses the built-in synthetic data (PTB-XL layout). Every field can be
overridden: ``--config.mode=linprobe --config.init=runs/pretrain --config.data.leads=limb``.

The recipe is the authors' (``config.recipe``; our departures: ``--config.recipe=stmem_jax``); the
batch, epochs and warm-up are ours, the authors' YAML holding placeholders (``train.config.downstream``).
"""

from stmem_jax.train.config import downstream

TASKS = ("st_mem", "all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")


def get_config(arg: str = "st_mem"):
    task = arg or "st_mem"
    if task not in TASKS:
        raise ValueError(f"unknown PTB-XL task {task!r}: use one of {', '.join(TASKS)}")
    config = downstream()
    config.data.task = task
    return config
