"""One ECG file in, one :class:`ECG` out, whatever its format; and the ECG files under a folder.

WFDB records (``.hea``) are read by ``core.wfdb`` and GE CardioSoft XML (UK Biobank) by
``core.cardiosoft``. Every other format is read by ecgdatakit (the ``[clinical]`` extra), which
tells the format from the file's content: DICOM waveform, HL7 aECG, GE MUSE XML, Philips Sierra
XML, SCP-ECG, EDF/EDF+, MFER, ISHNE, Mortara, and more. Whatever the format, the result is in mV,
one row per standard lead (names mapped through ``core.leads``'s aliases); leads III, aVR, aVL and
aVF missing from a file that has I and II (GE MUSE stores 8 leads) are derived from them
(Einthoven, Goldberger). Problems are :class:`ECGFileError` (the file cannot be used) or
:class:`ECGFileWarning` (something was left out), both naming the file.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from stmem_jax.core import cardiosoft, wfdb
from stmem_jax.core import fileio
from stmem_jax.core.fileio import file_problem, walk
from stmem_jax.core.leads import LEAD_NAMES, canonical_lead_name, lead_indices
from stmem_jax.core.signal import RecordError, Signal

CLINICAL_HINT = "pip install 'stmem-jax[clinical]'"
_COMPANIONS = (".dat", ".mat")  # signal files of a WFDB header next to them
_DERIVED = {  # the limb leads as combinations of I and II
    "III": (-1.0, 1.0), "aVR": (-0.5, -0.5), "aVL": (1.0, -0.5), "aVF": (-0.5, 1.0)}


class ECGFileError(RecordError, ValueError):
    """A file that cannot be used as an ECG; ``reason`` says why without the path."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


class ECGFileWarning(UserWarning):
    """Something in an ECG file was left out or changed; the message names the file."""


@dataclasses.dataclass(frozen=True, eq=False)
class ECG:
    """An ECG read from a file: ``signal`` (leads, samples) float32 in mV at ``fs`` Hz, one row per
    name in ``leads`` (standard names), and what the file says about it (``patient_id``,
    ``format``, ``date``, ``path``, ...)."""

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    record_id: str
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return self.signal.shape[1] / self.fs

    def select(self, leads: str | Sequence[str]) -> ECG:
        """This ECG with only ``leads`` (a lead-set name like ``"12"`` or ``"1"``, or names), in
        that order; an error naming the record when one is missing."""
        wanted = [LEAD_NAMES[i] for i in lead_indices(leads)]
        missing = [name for name in wanted if name not in self.leads]
        if missing:
            raise ECGFileError(self.record_id, f"lacks lead(s) {', '.join(missing)} (has {', '.join(self.leads)})")
        rows = [self.leads.index(name) for name in wanted]
        return dataclasses.replace(self, signal=self.signal[rows], leads=tuple(wanted))

    def as_signal(self) -> Signal:
        return Signal(self.signal, self.fs, list(self.leads))


def read_ecg(path: str, record_id: str | None = None) -> ECG:
    """The ECG in the file at ``path`` (any supported format); ``record_id`` defaults to the path."""
    path = os.fspath(path)
    try:
        signal, metadata = _read(path)
        data, names = _standard_leads(path, signal, metadata)
    except ECGFileError:
        raise
    except RecordError as error:
        raise ECGFileError(path, str(error)) from error
    metadata["path"] = path
    return ECG(data, float(signal.fs), names, record_id or path, metadata)


def _read(path: str) -> tuple[Signal, dict[str, Any]]:
    problem = file_problem(path)
    if problem:
        raise RecordError("no such file" if problem == "missing" else f"file {problem}")
    if path.endswith(".hea"):
        header = wfdb.read_header(path[:-4])
        return wfdb.read_signal(path[:-4]), {"format": "WFDB", "patient_id": header.comments.get("patient", "")}
    with fileio.open(path, "rb") as f:
        head = f.read(4096)
    if not head:
        raise RecordError("empty file")
    if cardiosoft.is_cardiosoft(head):
        return cardiosoft.read_cardiosoft(path)
    return _read_with_ecgdatakit(path)


def _read_with_ecgdatakit(path: str) -> tuple[Signal, dict[str, Any]]:
    try:
        import ecgdatakit
    except ImportError:
        raise RecordError(f"not WFDB or CardioSoft XML; other formats (DICOM, HL7 aECG, EDF, MUSE, ...) need "
                          f"ecgdatakit: {CLINICAL_HINT}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fileio.local_copy(path) as (local,):
                record = ecgdatakit.FileParser.parse(local, units="mV")
        except ecgdatakit.UnsupportedFormatError:
            raise RecordError("not an ECG file in a format this library reads") from None
        except ImportError as error:
            raise RecordError(f"{error} ({CLINICAL_HINT})") from None
        except (ecgdatakit.ECGDataKitError, OSError, ValueError) as error:
            raise RecordError(f"unreadable {_format_name(path)}: {error}") from None
    leads = [lead for lead in record.leads if len(lead.samples)]
    if not leads:
        raise RecordError("holds no lead with samples")
    for lead in leads:
        if lead.is_raw:
            raise RecordError(f"lead {lead.label}: the file gives no scale from its samples to mV (uncalibrated "
                              f"counts, or a unit that is not a voltage)")
        if lead.units != "mV":
            raise RecordError(f"lead {lead.label} is in {lead.units or 'no unit'!r}, not a voltage")
    rates = sorted({lead.sampling_rate for lead in leads})
    lengths = sorted({len(lead.samples) for lead in leads})
    if len(rates) > 1 or len(lengths) > 1:
        raise RecordError(f"leads differ in sampling rate ({', '.join(map(str, rates))} Hz) or length "
                          f"({', '.join(map(str, lengths))} samples)")
    for w in caught:
        if not issubclass(w.category, DeprecationWarning):
            warnings.warn(f"{path}: {w.message}", ECGFileWarning, stacklevel=4)
    when = record.recording.date
    device = " ".join(x for x in (record.recording.device.manufacturer, record.recording.device.model) if x)
    metadata = {"format": record.file_format.name or record.source_format, "patient_id": record.patient.patient_id,
                "date": when.isoformat() if when else None, "device": device, "sex": record.patient.sex,
                "age": record.patient.age}
    data = np.stack([np.asarray(lead.samples, np.float64) for lead in leads])
    return Signal(data, float(rates[0]), [lead.label for lead in leads]), metadata


def _format_name(path: str) -> str:
    import ecgdatakit

    try:
        found = ecgdatakit.FileParser.detect_format(path)
    except OSError:
        found = None
    return found["name"] if found else "file"


def _standard_leads(path: str, signal: Signal, metadata: dict[str, Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Rows of the standard leads in standard order (limb leads derived from I and II where missing)."""
    rows, unknown = {}, []
    for row, name in enumerate(signal.lead_names):
        try:
            standard = canonical_lead_name(name)
        except ValueError:
            unknown.append(name)
            continue
        if standard in rows:
            raise RecordError(f"lead {standard} appears twice")
        rows[standard] = np.asarray(signal.data[row], np.float64)
    if unknown:
        warnings.warn(f"{path}: left out channel(s) that are not ECG leads: {', '.join(unknown)}",
                      ECGFileWarning, stacklevel=3)
    if not rows:
        raise RecordError(f"no standard ECG lead among its channels ({', '.join(signal.lead_names) or 'none'})")
    if "I" in rows and "II" in rows:
        derived = [name for name in _DERIVED if name not in rows]
        for name in derived:
            a, b = _DERIVED[name]
            rows[name] = a * rows["I"] + b * rows["II"]
        if derived:
            metadata["derived_leads"] = derived
    names = tuple(name for name in LEAD_NAMES if name in rows)
    return np.stack([rows[name] for name in names]).astype(np.float32), names


def list_files(folder: str, pattern: str | None = None, exclude: Sequence[str] = (),
               skipped: list[tuple[str, str]] | None = None) -> list[str]:
    """Paths (relative to ``folder``, sorted) of the files under it, recursively (``fileio.walk``:
    each real folder once, regular files only), whose name or relative path matches ``pattern`` (a
    glob); hidden files, files in ``exclude`` and the signal files of WFDB headers (``.dat``/``.mat``
    beside a ``.hea``) are left out. ``(relative path, reason)`` of the entries the walk left out
    (not regular files, links leading outside) are appended to ``skipped`` when given."""
    found, left_out = walk(folder)
    present = set(found)
    skip = {fileio.absolute(p) for p in exclude}

    def wanted(relpath: str) -> bool:
        stem, ext = os.path.splitext(relpath)
        return not (ext.lower() in _COMPANIONS and stem + ".hea" in present) \
            and fileio.absolute(fileio.join(folder, relpath)) not in skip \
            and (not pattern or fnmatch.fnmatch(os.path.basename(relpath), pattern) or fnmatch.fnmatch(relpath, pattern))

    if skipped is not None:
        skipped.extend((relpath, reason) for relpath, reason in left_out if wanted(relpath))
    return [relpath for relpath in found if wanted(relpath)]
