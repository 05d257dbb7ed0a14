import re

import numpy as np
import pytest

from data_prep.synthetic import write_cardiosoft_xml
from stmem_jax.core.leads import LEAD_NAMES
from stmem_jax.core.cardiosoft import FORMAT, is_cardiosoft, read_cardiosoft
from stmem_jax.core.signal import RecordError

FS, SAMPLES, RESOLUTION_UV = 500, 5000, 5.0


@pytest.fixture(scope="module")
def recording():
    rng = np.random.default_rng(3)
    t = np.arange(SAMPLES) / FS
    return (np.sin(2 * np.pi * rng.uniform(0.8, 1.5, (12, 1)) * t) * rng.uniform(0.2, 2.0, (12, 1))
            + rng.normal(0, 0.05, (12, SAMPLES)))


@pytest.fixture(scope="module")
def written(tmp_path_factory, recording):
    path = tmp_path_factory.mktemp("cardiosoft") / "1234567_20205_2_0.xml"
    write_cardiosoft_xml(str(path), recording, FS, patient_id="1234567", resolution_uv=RESOLUTION_UV)
    return path


def _strip_parts(text: str) -> tuple[str, str]:
    """The text before <StripData> (with the median beats) and from it on."""
    i = text.index("<StripData>")
    return text[:i], text[i:]


def _lead(strip: str, lead: str, edit) -> str:
    """``strip`` with the body of lead ``lead``'s WaveformData replaced by ``edit(body)``."""
    pattern = re.compile(rf'(<WaveformData lead="{lead}">)(.*?)(</WaveformData>)', re.DOTALL)
    return pattern.sub(lambda m: m.group(1) + edit(m.group(2)) + m.group(3), strip, count=1)


def test_round_trip(written, recording):
    signal, meta = read_cardiosoft(str(written))
    assert signal.data.dtype == np.float64 and signal.data.shape == (12, SAMPLES)  # not the 600-sample medians
    assert np.abs(signal.data - recording).max() <= RESOLUTION_UV / 2 / 1000 + 1e-12
    assert signal.fs == 500.0 and isinstance(signal.fs, float)
    assert signal.lead_names == list(LEAD_NAMES)
    assert meta == {"patient_id": "1234567", "format": FORMAT, "date": "2015-06-15T10:30:05", "device": "CASE"}
    text = written.read_text()  # the medians come first, so a reader taking the first WaveformData fails
    assert text.index("<MedianSamples>") < text.index("<WaveformData") < text.index("<StripData>")
    assert text.count("<WaveformData") == 24 and "<ChannelSampleCountTotal>600<" in text


def test_millivolt_units_and_no_medians(tmp_path, recording):
    path = tmp_path / "mv.xml"
    write_cardiosoft_xml(str(path), recording[:2, :1000], FS, lead_names=("I", "II"), medians=False)
    text = path.read_text()
    assert "MedianSamples" not in text
    path.write_text(text.replace('<Resolution units="uVperLsb">5<', '<Resolution units="MVPERLSB">0.005<'))
    signal, meta = read_cardiosoft(str(path))
    assert signal.lead_names == ["I", "II"] and meta["patient_id"] == ""
    assert np.abs(signal.data - recording[:2, :1000]).max() <= RESOLUTION_UV / 2 / 1000 + 1e-12


def test_is_cardiosoft(written):
    head = written.read_bytes()[:4096]
    assert is_cardiosoft(head)
    assert is_cardiosoft(b"\xef\xbb\xbf <!-- exported -->\n<!DOCTYPE CardiologyXML>\n" + head[head.index(b"<Cardio"):])
    assert is_cardiosoft(b'<?xml version="1.0"?>\r\n<?xml-stylesheet href="a.xsl"?><CardiologyXML>')
    assert not is_cardiosoft(b'<?xml version="1.0"?>\n<AnnotatedECG xmlns="urn:hl7-org:v3">')
    assert not is_cardiosoft(b"<CardiologyXMLExtra>")
    assert not is_cardiosoft(np.random.default_rng(0).bytes(4096))
    assert not is_cardiosoft(b"")


def _only_medians(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + strip[strip.index("</StripData>") + len("</StripData>"):]


def _short_lead(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + _lead(strip, "V3", lambda body: body.rstrip().rstrip(",").rsplit(",", 1)[0] + ",\n")


def _bad_token(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + _lead(strip, "II", lambda body: body.replace(",", ",1x2,", 1))


def _unknown_units(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + strip.replace('units="uVperLsb"', 'units="furlongs"')


def _twice(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + strip.replace('lead="aVF"', 'lead="aVL"')


def _no_rate(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + re.sub(r"<SampleRate[^>]*>500</SampleRate>", "<SampleRate>fast</SampleRate>", strip)


def _no_waveforms(text: str) -> str:
    head, strip = _strip_parts(text)
    return head + re.sub(r"<WaveformData.*?</WaveformData>\s*", "", strip, flags=re.DOTALL)


ERRORS = {
    "truncated": (lambda text: text[:len(text) // 2],
                  r"^not well-formed XML \(line \d+, column \d+\): the file ends early \(truncated\?\)$"),
    "random bytes": (None, r"^not well-formed XML \(line 1, column \d+\)"),
    "empty": (lambda text: "", r"^empty file$"),
    "only medians": (_only_medians, r"^no <StripData> rhythm recording \(the file holds only <MedianSamples>"),
    "short lead": (_short_lead, r"^lead V3 has 4999 samples, <ChannelSampleCountTotal> says 5000$"),
    "bad token": (_bad_token, r"^lead II: value '1x2' \(number 2\) is not an integer$"),
    "unknown units": (_unknown_units, r"^unknown <Resolution> units 'furlongs'"),
    "lead twice": (_twice, r"^lead aVL appears twice in <StripData>$"),
    "rate": (_no_rate, r"^<StripData><SampleRate> is not a number \('fast'\)$"),
    "no waveforms": (_no_waveforms, r"^<StripData> holds no <WaveformData>$"),
    "other root": (lambda text: text.replace("CardiologyXML>", "AnnotatedECG>"),
                   r"^root element is <AnnotatedECG>, not <CardiologyXML>$"),
}


@pytest.mark.parametrize("case", ERRORS)
def test_errors(tmp_path, written, case):
    edit, reason = ERRORS[case]
    path = tmp_path / "bad.xml"
    if edit is None:
        path.write_bytes(b"\x07" + np.random.default_rng(1).bytes(2000))
    else:
        path.write_text(edit(written.read_text()))
    with pytest.raises(RecordError, match=reason):
        read_cardiosoft(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(RecordError, match="file missing or unreadable"):
        read_cardiosoft(str(tmp_path / "absent.xml"))
