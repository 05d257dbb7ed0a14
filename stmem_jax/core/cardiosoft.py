"""GE CardioSoft XML resting ECGs (UK Biobank's format): root element ``<CardiologyXML>``.

The 10 s rhythm recording is ``<StripData>``: ``<NumberOfLeads>``, ``<SampleRate units="Hz">``,
``<ChannelSampleCountTotal>``, ``<Resolution units="uVperLsb">``, then one ``<WaveformData lead="I">``
per lead holding comma-separated integers over several lines (tabs, newlines, maybe a trailing comma).
``<RestingECGMeasurements><MedianSamples>`` holds 600-sample median beats with the same child tags:
they are not the recording and are ignored. Patient id: ``<PatientInfo><PID>``; acquisition time:
``<ObservationDateTime>`` with ``<Hour>``, ``<Minute>``, ``<Second>``, ``<Day>``, ``<Month>``, ``<Year>``.
"""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import numpy as np

from stmem_jax.core import fileio
from stmem_jax.core.signal import RecordError, Signal

FORMAT = "GE CardioSoft XML"
_HEADER_BYTES = 4096
# What may precede the root element: whitespace, the XML declaration and other processing
# instructions, comments and a DOCTYPE (with an optional internal subset).
_ROOT = re.compile(r"(?:\s+|<\?.*?\?>|<!--.*?-->|<!DOCTYPE[^\[>]*(?:\[.*?\])?\s*>)*<CardiologyXML[\s/>]", re.DOTALL)
_UNITS = re.compile(r"([µμunm]?)v\s*(?:per|/)\s*lsb", re.IGNORECASE)
_MV_PER_V = {"": 1e3, "m": 1.0, "u": 1e-3, "µ": 1e-3, "μ": 1e-3, "n": 1e-6}
_INTEGER = re.compile(r"[-+]?[0-9]+")


def is_cardiosoft(header: bytes) -> bool:
    """Whether the first bytes of a file (up to 4096 are looked at) are XML with root ``<CardiologyXML``."""
    head = bytes(header[:_HEADER_BYTES])
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head.decode("utf-16", errors="ignore")
    else:
        text = head.removeprefix(b"\xef\xbb\xbf").decode("latin-1")
    return _ROOT.match(text.lstrip("\ufeff")) is not None


def read_cardiosoft(path: str) -> tuple[Signal, dict]:
    """Reads the ``<StripData>`` rhythm recording of a CardioSoft XML file.

    Returns the signal (leads, samples) in mV with the file's lead names, and metadata:
    ``patient_id`` ("" when absent), ``format`` (FORMAT), ``date`` (ISO 8601 or None) and
    ``device`` ("" when absent). Raises RecordError with the reason when the file is unusable.
    """
    try:
        with fileio.open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise RecordError(f"file missing or unreadable ({error.strerror})") from error
    if not raw.strip():
        raise RecordError("empty file")
    root = _parse(raw)
    if root.tag != "CardiologyXML":
        raise RecordError(f"root element is <{root.tag}>, not <CardiologyXML>")
    strip = root.find("StripData")
    if strip is None:
        strip = root.find(".//StripData")
    if strip is None:
        medians = root.find(".//MedianSamples") is not None
        raise RecordError("no <StripData> rhythm recording"
                          + (" (the file holds only <MedianSamples> median beats)" if medians else ""))
    signal, meta = _strip_signal(strip), _metadata(root)
    signal.patient_id = meta["patient_id"]  # Signal's patient_id field, where it has one
    return signal, meta


def _parse(raw: bytes) -> ET.Element:
    """The root element, namespaces stripped from tags. Expat expands no external entities and
    refuses entity-expansion bombs."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as error:
        line, column = error.position
        reason = str(error).split(":")[0]
        if reason in ("no element found", "unclosed token", "partial character"):
            reason = "the file ends early (truncated?)"
        raise RecordError(f"not well-formed XML (line {line}, column {column}): {reason}") from None
    for element in root.iter():
        if isinstance(element.tag, str) and "}" in element.tag:
            element.tag = element.tag.rsplit("}", 1)[1]
    return root


def _number(strip: ET.Element, tag: str) -> tuple[float, str]:
    """The positive value of ``<StripData><tag>`` and its units attribute (lower case, "" if none)."""
    element = strip.find(tag)
    if element is None or not (element.text or "").strip():
        raise RecordError(f"<StripData> has no <{tag}>")
    try:
        value = float(element.text)
    except ValueError:
        raise RecordError(f"<StripData><{tag}> is not a number ({element.text.strip()!r})") from None
    if not np.isfinite(value) or value <= 0:
        raise RecordError(f"<StripData><{tag}> must be positive, got {element.text.strip()!r}")
    return value, (element.get("units") or "").strip()


def _count(strip: ET.Element, tag: str) -> int | None:
    """The non-negative integer in ``<StripData><tag>``, None when absent."""
    element = strip.find(tag)
    if element is None:
        return None
    text = (element.text or "").strip()
    if not text.isdigit():
        raise RecordError(f"<StripData><{tag}> is not a count ({text!r})")
    return int(text)


def _samples(element: ET.Element, lead: str) -> np.ndarray:
    """The integers of one ``<WaveformData>`` (NumPy's parser; the slow check only names a bad value)."""
    text = (element.text or "").strip().rstrip(",")
    try:
        values = np.fromstring(text, dtype=np.int64, sep=",") if text else np.zeros(0, np.int64)
    except ValueError:
        values = None
    tokens = text.split(",") if text else []
    if values is None or values.size != len(tokens):
        k, bad = next(((k, t.strip()) for k, t in enumerate(tokens) if not _INTEGER.fullmatch(t.strip())),
                      (0, text))
        raise RecordError(f"lead {lead}: value {bad!r} (number {k + 1}) is not an integer")
    if np.abs(values).max(initial=0) >= np.iinfo(np.int64).max:
        raise RecordError(f"lead {lead}: a value is out of range")
    return values


def _strip_signal(strip: ET.Element) -> Signal:
    fs, fs_units = _number(strip, "SampleRate")
    if fs_units and fs_units.lower() != "hz":
        raise RecordError(f"unknown <SampleRate> units {fs_units!r} (expected Hz)")
    resolution, units = _number(strip, "Resolution")
    unit = _UNITS.fullmatch(units)
    if unit is None:
        raise RecordError(f"unknown <Resolution> units {units!r} (expected uVperLsb or mVperLsb)")
    mv_per_lsb = resolution * _MV_PER_V[unit.group(1).lower()]
    expected = _count(strip, "ChannelSampleCountTotal")
    num_leads = _count(strip, "NumberOfLeads")

    names, rows = [], []
    for element in strip.findall("WaveformData"):
        name = (element.get("lead") or "").strip()
        if not name:
            raise RecordError("a <StripData><WaveformData> has no lead attribute")
        if name in names:
            raise RecordError(f"lead {name} appears twice in <StripData>")
        samples = _samples(element, name)
        if expected is not None and len(samples) != expected:
            raise RecordError(f"lead {name} has {len(samples)} samples, <ChannelSampleCountTotal> says {expected}")
        names.append(name)
        rows.append(samples)
    if not rows:
        raise RecordError("<StripData> holds no <WaveformData>")
    if num_leads is not None and num_leads != len(rows):
        raise RecordError(f"<NumberOfLeads> says {num_leads}, <StripData> holds {len(rows)} leads")
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        counts = ", ".join(f"{n}: {len(r)}" for n, r in zip(names, rows))
        raise RecordError(f"leads have different sample counts ({counts})")
    if lengths == {0}:
        raise RecordError("<StripData> leads hold no samples")
    return Signal(np.stack(rows).astype(np.float64) * mv_per_lsb, fs, names)


def _text(root: ET.Element, *paths: str) -> str:
    """The stripped text of the first of ``paths`` present with text, else ""."""
    for p in paths:
        element = root.find(p)
        if element is not None and (element.text or "").strip():
            return element.text.strip()
    return ""


def _date(root: ET.Element) -> str | None:
    """``<ObservationDateTime>`` as ISO 8601 (a date alone when the time is missing), None if absent or invalid."""
    when = root.find("ObservationDateTime")
    if when is None:
        when = root.find(".//ObservationDateTime")
    if when is None:
        return None
    parts = {}
    for tag in ("Year", "Month", "Day", "Hour", "Minute", "Second"):
        text = _text(when, tag)
        if text:
            try:
                parts[tag] = int(float(text))
            except (ValueError, OverflowError):
                return None
    try:
        day = datetime.date(parts["Year"], parts["Month"], parts["Day"])
        if "Hour" not in parts:
            return day.isoformat()
        return datetime.datetime(day.year, day.month, day.day, parts["Hour"], parts.get("Minute", 0),
                                 parts.get("Second", 0)).isoformat()
    except (KeyError, ValueError, OverflowError):
        return None


def _metadata(root: ET.Element) -> dict:
    return {
        "patient_id": _text(root, "PatientInfo/PID", ".//PatientInfo/PID"),
        "format": FORMAT,
        "date": _date(root),
        "device": _text(root, ".//DeviceType", ".//DeviceInfo/Desc", ".//DeviceInfo/DeviceType"),
    }
