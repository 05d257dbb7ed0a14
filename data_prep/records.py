"""What a dataset reader hands to the preparation pipeline (the loaded signal and the error of an
unusable record are the shared core's: ``stmem_jax.core.signal``)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass
class Record:
    """One native record: where it is, who it belongs to, and its labels."""

    record_id: str
    patient_id: str
    source: str
    path: str                                   # the file named in reports
    locator: Any = None                         # whatever the reader needs to load the signal
    codes: list[str] = dataclasses.field(default_factory=list)
    code_weights: list[float] = dataclasses.field(default_factory=list)
    labels: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    age: float = math.nan
    sex: str = ""
    fold: int = 0
    split: str | None = None                    # set by the reader or by the split step
    duration_s: float | None = None             # when cheap to know: used to size shards


@dataclasses.dataclass
class Skip:
    """A record (or part of one) left out, and why."""

    record_id: str
    path: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def parse_age(value: Any) -> float:
    try:
        age = float(value)
    except (TypeError, ValueError):
        return math.nan
    return age if 0 <= age < 130 else math.nan


def parse_int(value: Any) -> int | None:
    """A whole number from a CSV cell (``7``, ``7.0``), None for anything else (empty, NaN, text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if math.isfinite(number) and number == int(number) else None


def parse_flag(value: Any) -> bool:
    """A CSV cell as a truth value: ``True``, ``1``, ``1.0`` (any case) are true; anything else false."""
    return str(value).strip().lower() in ("true", "1", "1.0")


def parse_sex(value: Any) -> str:
    text = str(value).strip().lower()
    if text in ("m", "male", "0", "0.0", "true"):
        return "M"
    if text in ("f", "female", "1", "1.0", "false"):
        return "F"
    return ""
