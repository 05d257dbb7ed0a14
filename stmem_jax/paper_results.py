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


# kweimann/ECG-JEPA, README.md, the table "comparisons with the ST-MEM method": macro AUROC quoted from
# arXiv 2402.09450, PTB-XL superdiagnostic records with a single label on ST-MEM's own split, ViT-B
# (CPC: 4FC+2LSTM+2FC), std in brackets (0.913(02) = 0.913 +- 0.002). The README names no label
# fraction; it sets these beside full-training-set results, so they are entered as 100% (Table 1's
# 100% columns, presumably). Its CPC row is "CPC (w/ entire PTB-XL)", which the README does not tie to
# the 100 Hz or the 250 Hz row: it is kept under its own label.
ECG_JEPA = "kweimann/ECG-JEPA README.md (comparison table quoting arXiv 2402.09450)"
_PTBXL_100 = {  # row: (fine-tune, linear probe), each (mean, std)
    "MoCo v3": ((0.913, 0.002), (0.739, 0.006)),
    "CMSC": ((0.877, 0.003), (0.797, 0.038)),
    "MTAE": ((0.910, 0.001), (0.807, 0.006)),
    "MTAE+RLM": ((0.911, 0.004), (0.806, 0.005)),
    "MLAE": ((0.915, 0.001), (0.779, 0.008)),
    "ST-MEM": ((0.933, 0.003), (0.838, 0.011)),
    "CPC (w/ entire PTB-XL)": ((0.934, 0.002), None),
}

# (row, dataset, mode, label fraction, lead setting, metric) -> Value; mode as in the grid
# (finetune | linprobe | scratch, the last for the Supervised row)
RESULTS: dict[tuple[str, str, str, float, str, str], Value] = {
    (row, "PTB-XL", mode, 1.0, "12", "auroc"): Value(*pair, ECG_JEPA)
    for row, pairs in _PTBXL_100.items() for mode, pair in zip(("finetune", "linprobe"), pairs) if pair
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
