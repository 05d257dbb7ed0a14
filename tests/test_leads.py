import pytest

from stmem_jax.core.leads import LEAD_NAMES, canonical_lead_name, lead_indices


def test_aliases_map_to_standard_names():
    assert canonical_lead_name("AVR") == "aVR"
    assert canonical_lead_name("DII") == "II"
    assert canonical_lead_name(" v6 ") == "V6"
    with pytest.raises(ValueError, match="unknown lead name 'X1'"):
        canonical_lead_name("X1")


def test_lead_indices_by_name_set_and_index():
    assert lead_indices(("II",)) == (1,)
    assert lead_indices(("V1", "I")) == (6, 0)
    assert lead_indices("limb") == (0, 1, 2, 3, 4, 5)
    assert lead_indices("12") == tuple(range(12))
    assert lead_indices(None, 6) == tuple(range(6))
    assert lead_indices(["avf", 6]) == (5, 6)
    assert lead_indices(LEAD_NAMES) == tuple(range(12))
    assert lead_indices("I,II") == (0, 1) and lead_indices("V1, I") == (6, 0)  # data.leads=I,II anywhere


def test_first_k_rule_and_errors():
    assert lead_indices(("II",), first_k=True) == (0,)
    assert lead_indices(("V1", "V2", "V3"), first_k=True) == (0, 1, 2)
    with pytest.raises(ValueError, match="2 leads named"):
        lead_indices(("I", "II"), 3)
    with pytest.raises(ValueError, match="twice"):
        lead_indices(("I", "DI"))
    with pytest.raises(ValueError, match="outside"):
        lead_indices((12,))
    with pytest.raises(ValueError, match="needs 7 lead embeddings"):
        lead_indices(("V1",), num_leads=6)
