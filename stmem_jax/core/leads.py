"""Standard 12-lead order, name aliases, and lead selection by name or index."""

from __future__ import annotations

from collections.abc import Sequence

LEAD_NAMES = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LIMB_LEADS = LEAD_NAMES[:6]

# Spellings seen in the source datasets, lower-cased, mapped to the standard names.
_ALIASES = {name.lower(): name for name in LEAD_NAMES}
_ALIASES.update({"di": "I", "dii": "II", "diii": "III", "lead i": "I", "lead ii": "II", "lead iii": "III"})

# Named lead sets accepted wherever a list of leads is.
LEAD_SETS = {
    "12": LEAD_NAMES,
    "12-lead": LEAD_NAMES,
    "limb": LIMB_LEADS,
    "6": LIMB_LEADS,
    "6-lead": LIMB_LEADS,
    "1": ("I",),
    "1-lead": ("I",),
}


def canonical_lead_name(name: str) -> str:
    """Maps a lead name as spelled in a file (``AVR``, ``DII``, ``v1``) to the standard name."""
    try:
        return _ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown lead name {name!r}; known leads: {', '.join(LEAD_NAMES)}") from None


def lead_indices(leads: str | Sequence[str | int] | None, num_channels: int | None = None,
                 *, num_leads: int = len(LEAD_NAMES), first_k: bool = False) -> tuple[int, ...]:
    """Returns the lead-embedding indices for the leads present, in input order.

    ``leads`` is a lead-set name (``"limb"``, ``"12"``, ``"1"``), comma-separated names
    (``"I,II,V1"``), a sequence of lead names and/or indices into the standard order, or None for
    the first ``num_channels`` leads.
    With ``first_k`` the public code's rule applies: a k-lead input uses embeddings 0..k-1
    whatever its leads are.
    """
    if isinstance(leads, str):
        leads = LEAD_SETS.get(leads.strip().lower()) or parse_leads(leads)
        leads = (leads,) if isinstance(leads, str) else leads
    if leads is None:
        if num_channels is None:
            raise ValueError("lead_indices needs either `leads` or `num_channels`")
        indices = tuple(range(num_channels))
    else:
        indices = tuple(_one_index(lead, num_leads) for lead in leads)
    if num_channels is not None and len(indices) != num_channels:
        raise ValueError(f"{len(indices)} leads named ({leads!r}) but the input has {num_channels} channels")
    if len(set(indices)) != len(indices):
        raise ValueError(f"lead selection {leads!r} names a lead twice")
    if first_k:
        indices = tuple(range(len(indices)))
    if max(indices, default=0) >= num_leads:
        raise ValueError(f"lead selection {leads!r} needs {max(indices) + 1} lead embeddings, model has {num_leads}")
    return indices


def _one_index(lead: str | int, num_leads: int) -> int:
    if isinstance(lead, str):
        return LEAD_NAMES.index(canonical_lead_name(lead))
    index = int(lead)
    if not 0 <= index < num_leads:
        raise ValueError(f"lead index {index} is outside 0..{num_leads - 1}")
    return index


def parse_leads(text: str) -> str | tuple[str, ...]:
    """``"I,II,V1"`` -> ``("I", "II", "V1")``; set names and single lead names stay as they are."""
    return tuple(x.strip() for x in text.split(",")) if "," in text else text.strip()
