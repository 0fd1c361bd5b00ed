"""The raw tag scanner agrees with pydicom on the same bytes, or declines (falls back) cleanly."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from diff3m.node import ingest, rawscan
from diff3m.node.syntaxes import DEFLATED, EXPLICIT_LE, IMPLICIT_LE, JPEG_BASELINE
from tests.dicom_factory import make_dataset, to_bytes

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on the odd values

DX = "1.2.840.10008.5.1.4.1.1.1.1"
LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _outcome(data: bytes, fast: bool) -> Any:
    try:
        return ingest.parse(data, None, fast=fast)
    except ingest.IngestError as err:
        return ("refused", err.status, err.comment)


def assert_same_as_pydicom(data: bytes) -> bool:
    """parse() with the scanner == parse() with pydicom alone; True when the scanner took the input."""
    took = rawscan.scan(data) is not None
    assert _outcome(data, fast=True) == _outcome(data, fast=False)
    return took


# -- a small encoder, so the tests control lengths, VRs and sequence encodings byte by byte --

def element(tag: int, vr: str, value: bytes, implicit: bool, undefined: bool = False) -> bytes:
    """One data element; ``undefined`` writes 0xFFFFFFFF as length (value must then hold the items)."""
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    length = 0xFFFFFFFF if undefined else len(value)
    if implicit or tag >> 16 == 0xFFFE:
        return head + struct.pack("<I", length) + value
    if vr in LONG:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", length) + value
    return head + vr.encode() + struct.pack("<H", length) + value


def sequence(tag: int, items: list[bytes], implicit: bool, undefined_seq: bool,
             undefined_items: bool) -> bytes:
    """A sequence of already encoded item datasets, with defined or undefined lengths."""
    body = b""
    for item in items:
        if undefined_items:
            body += element(0xFFFEE000, "", item + element(0xFFFEE00D, "", b"", True), True, undefined=True)
        else:
            body += element(0xFFFEE000, "", item, True)
    if undefined_seq:
        return element(tag, "SQ", body + element(0xFFFEE0DD, "", b"", True), implicit, undefined=True)
    return element(tag, "SQ", body, implicit)


def pad(value: bytes, vr: str) -> bytes:
    """Even length, as DICOM requires (UI pads with NUL, text with a space)."""
    return value + (b"\0" if vr == "UI" else b" ") * (len(value) % 2)


def part10(dataset: bytes, ts: str, sop_class: str, sop_uid: str) -> bytes:
    """Preamble, DICM and an explicit VR LE file meta group in front of ``dataset``."""
    elems = (element(0x00020001, "OB", b"\0\1", False)
             + element(0x00020002, "UI", pad(sop_class.encode(), "UI"), False)
             + element(0x00020003, "UI", pad(sop_uid.encode(), "UI"), False)
             + element(0x00020010, "UI", pad(ts.encode(), "UI"), False))
    group_length = element(0x00020000, "UL", struct.pack("<I", len(elems)), False)
    return b"\0" * 128 + b"DICM" + group_length + elems + dataset


def _mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, else ``odd``."""
    return st.integers(0, 9).flatmap(lambda i: good if i else odd)


_uids = _mostly(st.sampled_from(["1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.1", "1.2.0003.4", " 1.2.5 "]),
                st.sampled_from(["", "1.2\\3.4", "1.2.3.4" * 10, "1.2.\x013", "1.2.3\x00"]))
_texts = _mostly(
    st.one_of(st.sampled_from(["PA", "AP", "LL", "LATERAL", "", " PA ", "CHEST PA", "x" * 70]),
              st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)),
    st.one_of(st.sampled_from(["P\\A", "A\x00B", "\x00", "\xe9"]),
              st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0xFF), max_size=12)),
)
_numbers = st.one_of(st.integers(0, 600).map(lambda n: struct.pack("<H", n)), st.binary(max_size=4))
_frames = _mostly(st.sampled_from([b"1", b" 1", b"2", b"01"]),
                  st.sampled_from([b"", b"1.5", b"0", b"A", b"-1"]))


@st.composite
def datasets(draw: st.DrawFn) -> bytes:
    """A Part-10 object of hand-made elements: values, encodings and structure vary, some are wrong."""
    implicit = draw(st.booleans())
    ts = IMPLICIT_LE if implicit else draw(_mostly(st.sampled_from([EXPLICIT_LE, JPEG_BASELINE]),
                                                   st.sampled_from([DEFLATED, "1.2.840.10008.1.2.2"])))
    sop_uid = draw(_uids)
    els: dict[int, bytes] = {}

    def text(tag: int, vr: str, value: str) -> None:
        raw = value.encode("latin-1")
        els[tag] = element(tag, vr, pad(raw, vr), implicit)

    for tag, vr, strat in [(0x00080016, "UI", _mostly(st.just(DX), _uids)),
                           (0x00080018, "UI", st.just(sop_uid)),
                           (0x0020000D, "UI", _uids), (0x0020000E, "UI", _uids)]:
        if draw(st.integers(0, 19)):
            text(tag, vr, draw(strat))
    for tag, vr in [(0x00080020, "DA"), (0x00080050, "SH"), (0x00080060, "CS"), (0x0008103E, "LO"),
                    (0x00100020, "LO"), (0x00100021, "LO"), (0x00181030, "LO"), (0x00185101, "CS"),
                    (0x00080008, "CS"), (0x00100010, "PN")]:
        if draw(st.booleans()):
            text(tag, vr, draw(_texts))
    rows, cols = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    for tag, value in [(0x00280010, struct.pack("<H", rows)), (0x00280011, struct.pack("<H", cols)),
                       (0x00280100, struct.pack("<H", 16)), (0x00280002, struct.pack("<H", 1))]:
        choice = draw(st.integers(0, 30))
        if choice:
            els[tag] = element(tag, "US" if choice > 1 else "SS", value if choice > 2 else draw(_numbers),
                               implicit)
    if draw(st.booleans()):
        els[0x00280008] = element(0x00280008, "IS", pad(draw(_frames), "IS"), implicit)
    for tag in (0x00540220, 0x00081140):  # ViewCodeSequence, and one the scanner only skips
        if draw(st.booleans()):
            items = []
            for _ in range(draw(st.integers(0, 2))):
                item = b""
                if draw(st.booleans()):
                    item += element(0x00080100, "SH", pad(draw(_texts).encode("latin-1"), "SH"), implicit)
                if draw(st.booleans()):
                    item += element(0x00080104, "LO", pad(draw(_texts).encode("latin-1"), "LO"), implicit)
                if draw(st.booleans()):  # a nested (empty or 1-item) sequence, as ViewModifierCodeSequence
                    inner = [element(0x00080100, "SH", b"12", implicit)] * draw(st.integers(0, 1))
                    item += sequence(0x00540222, inner, implicit, draw(st.booleans()), draw(st.booleans()))
                items.append(item)
            els[tag] = sequence(tag, items, implicit, draw(st.booleans()), draw(st.booleans()))
    if draw(st.integers(0, 9)):
        n = draw(_mostly(st.just(rows * cols * 2), st.sampled_from([rows * cols, 0])))
        els[0x7FE00010] = element(0x7FE00010, "OW", b"\1" * n, implicit)
    dataset = b"".join(els[t] for t in sorted(els))
    meta_sop = sop_uid if draw(st.integers(0, 19)) else "9.9.9"
    return part10(dataset, ts, DX, meta_sop)


@st.composite
def corrupted(draw: st.DrawFn) -> bytes:
    """A generated object with a few bytes overwritten, or cut short."""
    data = draw(datasets())
    if draw(st.booleans()):
        return data[:draw(st.integers(0, len(data)))]
    at = draw(st.integers(0, len(data) - 1))
    patch = draw(st.binary(min_size=1, max_size=6))
    return data[:at] + patch + data[at + len(patch):]


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=datasets())
def test_scanner_matches_pydicom_on_generated_objects(data: bytes) -> None:
    assert_same_as_pydicom(data)


@hsettings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=corrupted())
def test_scanner_matches_pydicom_on_corrupted_objects(data: bytes) -> None:
    assert_same_as_pydicom(data)


@hsettings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=600))
def test_scanner_never_raises_on_garbage(data: bytes) -> None:
    rawscan.scan(data)
    assert_same_as_pydicom(b"\0" * 128 + b"DICM" + data)


@pytest.mark.parametrize("implicit", [False, True])
@pytest.mark.parametrize("view", ["PA", "LL", None])
def test_scanner_takes_ordinary_images(implicit: bool, view: str | None) -> None:
    ds = make_dataset(rows=16, cols=16, view_position=view)
    if implicit:
        ds.file_meta.TransferSyntaxUID = IMPLICIT_LE
    data = to_bytes(ds)
    scanned = rawscan.scan(data)
    assert scanned is not None and scanned.values["Rows"] == 16
    assert scanned.transfer_syntax == (IMPLICIT_LE if implicit else EXPLICIT_LE)
    assert data[scanned.pixel_pos:scanned.pixel_pos + 4] == b"\xe0\x7f\x10\x00"
    assert assert_same_as_pydicom(data)


def test_scanner_declines_what_it_does_not_vouch_for() -> None:
    ds = make_dataset(rows=8, cols=8)
    ds.PatientID = "M\xfcller"  # non-ASCII text: pydicom decodes it with the character set
    assert rawscan.scan(to_bytes(ds)) is None
    assert ingest.parse(to_bytes(ds)).patient_id == "M\xfcller"
    ds = make_dataset(rows=8, cols=8)
    ds.file_meta.TransferSyntaxUID = DEFLATED
    assert rawscan.scan(to_bytes(ds)) is None
    assert rawscan.scan(b"not dicom") is None
