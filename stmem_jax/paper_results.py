"""The ST-MEM paper's reported numbers (Na, Park, Tae, Joo, ICLR 2024, arXiv 2402.09450), printed
beside ours by ``stmem-benchmark --reference paper``; each value with its source. Only numbers from
a source we can name are here: a cell without one prints ``n/a``.

Also the paper's row labels in its Table 1 order (:data:`ROWS`), how a grid entry's NAME matches one
(:func:`match_row`), and which of our tasks is which of the paper's datasets (:data:`TASK_DATASETS`).
The labels are labels: no code branches on a method's name.
"""

from __future__ import annotations

import re
from typing import NamedTuple

PAPER = "Na et al., ICLR 2024, arXiv 2402.09450"

# the paper's rows in its Table 1 order; "Random init + linear probe" is ours (a control the paper lacks:
# Berger et al., arXiv 2602.17531); "CPC (w/ entire PTB-XL)" is how the source below names its CPC row
SUPERVISED, RANDOM_INIT = "Supervised", "Random init + linear probe"
ROWS = (SUPERVISED, RANDOM_INIT, "MoCo v3", "CMSC", "MTAE", "MTAE+RLM", "MLAE", "CPC (250 Hz)",
        "CPC (100 Hz)", "CPC (w/ entire PTB-XL)", "ST-MEM", "ST-MEM w/o lead indicators")

# our task names (configs/downstream) -> the paper's datasets
TASK_DATASETS = {"st_mem": "PTB-XL", "cpsc2018_single": "CPSC2018", "af2017": "PhysioNet 2017"}


class Value(NamedTuple):
    mean: float
    std: float | None
    source: str


# The authors' README (github.com/bakqui/ST-MEM), its two tables of arXiv 2402.09450: macro AUROC, mean +- std.
AUTHORS_README = "bakqui/ST-MEM README.md (the tables of arXiv 2402.09450)"
FRACTIONS = (0.01, 0.05, 1.0)
# Table 1: fine-tuning with 12 leads on data unseen in pre-training; row: {dataset: (1%, 5%, 100%)}. The
# Supervised row trains from scratch (the grid's mode scratch); the README's "(250 Hz) CPC†" and "(100 Hz)
# CPC†" are the CPC rows (it does not say what † marks).
_TABLE_1 = {
    SUPERVISED: {"PTB-XL": ((0.676, 0.011), (0.736, 0.020), (0.905, 0.004)),
                 "CPSC2018": ((0.600, 0.095), (0.609, 0.111), (0.958, 0.002))},
    "MoCo v3": {"PTB-XL": ((0.797, 0.006), (0.826, 0.015), (0.913, 0.002)),
                "CPSC2018": ((0.791, 0.045), (0.903, 0.019), (0.967, 0.003))},
    "CMSC": {"PTB-XL": ((0.648, 0.064), (0.773, 0.023), (0.877, 0.003)),
             "CPSC2018": ((0.625, 0.013), (0.732, 0.038), (0.938, 0.006))},
    "MTAE": {"PTB-XL": ((0.707, 0.024), (0.713, 0.001), (0.910, 0.001)),
             "CPSC2018": ((0.670, 0.032), (0.756, 0.013), (0.961, 0.001))},
    "MTAE+RLM": {"PTB-XL": ((0.730, 0.030), (0.730, 0.003), (0.911, 0.004)),
                 "CPSC2018": ((0.708, 0.020), (0.726, 0.011), (0.960, 0.002))},
    "MLAE": {"PTB-XL": ((0.793, 0.007), (0.838, 0.018), (0.915, 0.001)),
             "CPSC2018": ((0.860, 0.013), (0.922, 0.007), (0.973, 0.002))},
    "CPC (250 Hz)": {"PTB-XL": ((0.740, 0.057), (0.838, 0.024), (0.933, 0.001)),
                     "CPSC2018": ((0.754, 0.015), (0.898, 0.026), (0.974, 0.002))},
    "CPC (100 Hz)": {"PTB-XL": ((0.773, 0.014), (0.842, 0.043), (0.934, 0.002)),
                     "CPSC2018": ((0.762, 0.058), (0.917, 0.016), (0.973, 0.003))},
    "ST-MEM": {"PTB-XL": ((0.815, 0.012), (0.878, 0.011), (0.933, 0.003)),
               "CPSC2018": ((0.897, 0.025), (0.952, 0.004), (0.980, 0.001))},
}
# Lead robustness: fine-tuning with 100% of the labels; row: {(dataset, our lead setting): value}; 6 leads are
# I, II, III, aVR, aVL, aVF (``limb``), 1 lead is lead I. Its 12-lead columns are Table 1's 100% ones.
_LEAD_TABLE = {
    "MTAE+RLM": {("PTB-XL", "12"): (0.911, 0.004), ("PTB-XL", "limb"): (0.888, 0.002), ("PTB-XL", "1"): (0.795, 0.003),
                 ("CPSC2018", "12"): (0.960, 0.002), ("CPSC2018", "limb"): (0.931, 0.017),
                 ("CPSC2018", "1"): (0.909, 0.006), ("PhysioNet 2017", "1"): (0.857, 0.005)},
    "MLAE": {("PTB-XL", "12"): (0.915, 0.001), ("PTB-XL", "limb"): (0.890, 0.001), ("PTB-XL", "1"): (0.797, 0.001),
             ("CPSC2018", "12"): (0.973, 0.002), ("CPSC2018", "limb"): (0.959, 0.002),
             ("CPSC2018", "1"): (0.925, 0.001), ("PhysioNet 2017", "1"): (0.861, 0.003)},
    "ST-MEM": {("PTB-XL", "12"): (0.933, 0.003), ("PTB-XL", "limb"): (0.903, 0.007), ("PTB-XL", "1"): (0.804, 0.005),
               ("CPSC2018", "12"): (0.980, 0.001), ("CPSC2018", "limb"): (0.973, 0.002),
               ("CPSC2018", "1"): (0.937, 0.006), ("PhysioNet 2017", "1"): (0.866, 0.003)},
}

# kweimann/ECG-JEPA, README.md, the table "comparisons with the ST-MEM method": macro AUROC quoted from
# arXiv 2402.09450, PTB-XL superdiagnostic records with a single label on ST-MEM's own split, ViT-B
# (CPC: 4FC+2LSTM+2FC), std in brackets (0.913(02) = 0.913 +- 0.002), with no label fraction named. Its
# fine-tuning column is Table 1's 100% PTB-XL column above; kept from it: the linear-probe column (the
# authors' README has none), entered as 100% of the labels, and its "CPC (w/ entire PTB-XL)" row (0.934,
# Table 1's CPC (100 Hz) at 100%), under its own label.
ECG_JEPA = "kweimann/ECG-JEPA README.md (comparison table quoting arXiv 2402.09450)"
_PTBXL_100_LINPROBE = {"MoCo v3": (0.739, 0.006), "CMSC": (0.797, 0.038), "MTAE": (0.807, 0.006),
                       "MTAE+RLM": (0.806, 0.005), "MLAE": (0.779, 0.008), "ST-MEM": (0.838, 0.011)}

# (row, dataset, mode, label fraction, lead setting, metric) -> Value; mode as in the grid
# (finetune | linprobe | scratch, the last for the Supervised row)
RESULTS: dict[tuple[str, str, str, float, str, str], Value] = {
    **{(row, dataset, "scratch" if row == SUPERVISED else "finetune", fraction, "12", "auroc"):
       Value(*cell, AUTHORS_README) for row, datasets in _TABLE_1.items() for dataset, cells in datasets.items()
       for fraction, cell in zip(FRACTIONS, cells)},
    **{(row, dataset, "finetune", 1.0, leads, "auroc"): Value(*cell, AUTHORS_README)
       for row, cells in _LEAD_TABLE.items() for (dataset, leads), cell in cells.items()},
    **{(row, "PTB-XL", "linprobe", 1.0, "12", "auroc"): Value(*cell, ECG_JEPA)
       for row, cell in _PTBXL_100_LINPROBE.items()},
    ("CPC (w/ entire PTB-XL)", "PTB-XL", "finetune", 1.0, "12", "auroc"): Value(0.934, 0.002, ECG_JEPA),
}

REFERENCES = ("paper",)  # grid.reference values; "" prints no reference


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def match_row(name: str) -> str | None:
    """The paper row (:data:`ROWS`) a grid entry's NAME names, case, spaces and punctuation ignored
    (``st-mem``, ``MTAE + RLM``, ``cpc_100hz``); None when it names none."""
    return {_key(row): row for row in ROWS}.get(_key(name))


def lookup(row: str | None, task: str, mode: str, fraction: float, leads: str, metric: str) -> Value | None:
    """The paper's number for one cell of ours, or None."""
    return RESULTS.get((row, TASK_DATASETS.get(task), mode, float(fraction), leads, metric))
