"""Seeded, patient-disjoint, label-stratified train / validation / test assignment."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from data_prep.records import Record

SPLITS = ("train", "validation", "test")
FRACTIONS = (0.7, 0.1, 0.2)


def assign_splits(records: list[Record], task: str | None, seed: int = 0,
                  fractions: tuple[float, float, float] = FRACTIONS) -> None:
    """Sets ``split`` on every record that has none.

    Patients are the unit: all records of a patient land in one split. Patients are grouped by
    their most common first label in ``task`` (the stratum); within each stratum, patients in a
    seeded random order go one by one to the split furthest below its share of records.
    """
    patients: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        if record.split is None:
            patients[record.patient_id].append(record)
    strata: dict[str, list[str]] = defaultdict(list)
    for patient, own in sorted(patients.items()):
        firsts = Counter(r.labels.get(task, [""])[0] if task and r.labels.get(task) else "" for r in own)
        strata[min(firsts, key=lambda k: (-firsts[k], k))].append(patient)
    rng = np.random.default_rng(seed)
    target = np.asarray(fractions, dtype=np.float64)
    for stratum in sorted(strata):
        members = strata[stratum]
        counts = np.zeros(len(SPLITS))
        for index in rng.permutation(len(members)):
            own = patients[members[index]]
            deficit = target * (counts.sum() + len(own)) - counts
            choice = int(np.argmax(deficit))
            counts[choice] += len(own)
            for record in own:
                record.split = SPLITS[choice]
