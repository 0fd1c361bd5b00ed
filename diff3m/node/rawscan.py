"""Raw tag scan of a received Part-10 object: the few tags ingest needs, read from the bytes without pydicom.

The receive path only needs a dozen attributes (UIDs, Modality, ViewPosition, Rows/Columns, ...) and
where Pixel Data starts. ``scan`` walks the element headers of Explicit or Implicit VR Little Endian
(the dataset encoding of every syntax the node accepts except Deflated), keeps the values it needs
and skips everything else by length, stopping at Pixel Data. It is strict: whenever the bytes are
anything but plain and well formed (deflate, big endian, an unexpected VR, a multi-valued or
non-ASCII text, an undefined length where none belongs, a truncated element, a tag out of order,
a VR that does not match the transfer syntax) it returns ``None`` and the caller parses with pydicom
as before, so the two paths give the same answers (checked by a hypothesis test against pydicom).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR

from diff3m.node.syntaxes import DEFLATED, IMPLICIT_LE, SUPPORTED_TRANSFER_SYNTAXES

# tag -> (keyword, VR) of the attributes ingest reads (ingest.NEEDED_TAGS less SpecificCharacterSet:
# only printable-ASCII values take this path, and those decode the same in every character set)
WANTED: dict[int, tuple[str, str]] = {
    0x00080016: ("SOPClassUID", "UI"),
    0x00080018: ("SOPInstanceUID", "UI"),
    0x00080020: ("StudyDate", "DA"),
    0x00080050: ("AccessionNumber", "SH"),
    0x00080060: ("Modality", "CS"),
    0x0008103E: ("SeriesDescription", "LO"),
    0x00100020: ("PatientID", "LO"),
    0x00100021: ("IssuerOfPatientID", "LO"),
    0x00181030: ("ProtocolName", "LO"),
    0x00185101: ("ViewPosition", "CS"),
    0x0020000D: ("StudyInstanceUID", "UI"),
    0x0020000E: ("SeriesInstanceUID", "UI"),
    0x00280002: ("SamplesPerPixel", "US"),
    0x00280008: ("NumberOfFrames", "IS"),
    0x00280010: ("Rows", "US"),
    0x00280011: ("Columns", "US"),
    0x00280100: ("BitsAllocated", "US"),
    0x00540220: ("ViewCodeSequence", "SQ"),
}
_ITEM_WANTED: dict[int, tuple[str, str]] = {
    0x00080100: ("CodeValue", "SH"),
    0x00080104: ("CodeMeaning", "LO"),
}
_META_WANTED: dict[int, tuple[str, str]] = {
    0x00020002: ("MediaStorageSOPClassUID", "UI"),
    0x00020003: ("MediaStorageSOPInstanceUID", "UI"),
    0x00020010: ("TransferSyntaxUID", "UI"),
}
PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # pydicom's stop_before_pixels set
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                       b"UV"})
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                        b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
_MAX_DEPTH = 8
_PRINTABLE = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")  # printable ASCII without the backslash (VM > 1)
_DIGITS = re.compile(rb" *[0-9]+ *")
_HEAD = struct.Struct("<HHI")  # implicit: group, element, length
_EHEAD = struct.Struct("<HH2sH")  # explicit: group, element, VR, 16-bit length
_U32 = struct.Struct("<I")


class _Fallback(Exception):
    """The bytes are not plain enough for the scanner; parse them with pydicom."""


@dataclass(frozen=True)
class Scan:
    """What ``scan`` read: the meta UIDs, the dataset values by keyword and where Pixel Data starts."""

    transfer_syntax: str
    meta: dict[str, str]
    values: dict[str, Any]  # str, int, or for ViewCodeSequence a list of {keyword: str}
    pixel_pos: int  # offset of the first Pixel Data tag, or len(data) when there is none


def _text(raw: bytes, vr: str) -> str:
    value = raw.rstrip(b" \x00")
    if not _PRINTABLE.fullmatch(value):
        raise _Fallback
    text = value.decode("ascii")
    return text.lstrip(" ") if vr == "UI" else text


def _convert(raw: bytes, vr: str) -> Any:
    if vr == "US":
        if len(raw) != 2:
            raise _Fallback
        return raw[0] | raw[1] << 8
    if vr == "IS":
        if not _DIGITS.fullmatch(raw):
            raise _Fallback
        return int(raw)
    return _text(raw, vr)


class _Reader:
    def __init__(self, data: bytes | bytearray | memoryview, implicit: bool) -> None:
        self.data = data
        self.end = len(data)
        self.implicit = implicit

    def header(self, pos: int, end: int) -> tuple[int, bytes | None, int, int]:
        """(tag, VR or None when implicit, value length, value offset) of the element at ``pos``."""
        if self.implicit:
            if pos + 8 > end:
                raise _Fallback
            group, elem, length = _HEAD.unpack_from(self.data, pos)
            return group << 16 | elem, None, length, pos + 8
        if pos + 8 > end:
            raise _Fallback
        group, elem, vr, length = _EHEAD.unpack_from(self.data, pos)
        tag = group << 16 | elem
        if group == 0xFFFE:  # item / delimiters have no VR
            return tag, None, _U32.unpack_from(self.data, pos + 4)[0], pos + 8
        if vr in _LONG_VRS:
            if pos + 12 > end:
                raise _Fallback
            return tag, vr, _U32.unpack_from(self.data, pos + 8)[0], pos + 12
        if vr not in _SHORT_VRS:
            raise _Fallback
        return tag, vr, length, pos + 8

    def first_looks_right(self, pos: int, end: int) -> None:
        """pydicom switches explicit/implicit on the first element of a dataset when they disagree."""
        if pos + 6 > end:
            return
        looks_explicit = all(0x40 < b < 0x5B for b in bytes(self.data[pos + 4:pos + 6]))
        if looks_explicit == self.implicit:
            raise _Fallback

    def dataset(self, pos: int, end: int, wanted: dict[int, tuple[str, str]], out: dict[str, Any],
                depth: int, top: bool) -> int:
        """Read elements from ``pos`` up to ``end`` (or an item delimiter); returns where it stopped."""
        if depth > _MAX_DEPTH:
            raise _Fallback
        if top or not self.implicit:
            self.first_looks_right(pos, end)
        last = -1
        while pos < end:
            tag, vr, length, value = self.header(pos, end)
            if top and tag in PIXEL_TAGS:
                return pos
            if tag == _ITEM_END and not top:
                if length != 0:
                    raise _Fallback
                return -(value)  # negative: ended by a delimiter, resume at -result
            if tag <= last or tag >> 16 == 0xFFFE or tag >> 16 == 0x0002:
                raise _Fallback
            last = tag
            want = wanted.get(tag)
            if want is not None and vr is not None and vr.decode() != want[1]:
                raise _Fallback
            if length == _UNDEFINED:
                if vr is None and _dictionary_vr(tag) != "SQ" or vr not in (None, b"SQ"):
                    raise _Fallback
                items: list[dict[str, Any]] = []
                pos = self.sequence(value, end, items, depth, undefined=True)
            else:
                if value + length > end:
                    raise _Fallback
                if (want is not None and want[1] == "SQ") or vr == b"SQ":
                    items = []
                    self.sequence(value, value + length, items, depth, undefined=False)
                elif want is not None:
                    out[want[0]] = _convert(bytes(self.data[value:value + length]), want[1])
                pos = value + length
            if want is not None and want[1] == "SQ":
                out[want[0]] = items
        if pos != end:
            raise _Fallback
        return pos

    def sequence(self, pos: int, end: int, items: list[dict[str, Any]], depth: int, undefined: bool) -> int:
        """Read the items of a sequence; returns the offset after it (after the delimiter if undefined)."""
        while True:
            if pos >= end:
                if undefined:
                    raise _Fallback
                return pos
            tag, _vr, length, value = self.header(pos, end)
            if tag == _SEQ_END and undefined:
                if length != 0:
                    raise _Fallback
                return value
            if tag != _ITEM:
                raise _Fallback
            item: dict[str, Any] = {}
            if length == _UNDEFINED:
                stop = self.dataset(value, end, _ITEM_WANTED, item, depth + 1, top=False)
                if stop >= 0:  # ran to the end without an item delimiter
                    raise _Fallback
                pos = -stop
            else:
                if value + length > end or self.dataset(value, value + length, _ITEM_WANTED, item, depth + 1,
                                                        top=False) < 0:
                    raise _Fallback
                pos = value + length
            items.append(item)


def _dictionary_vr(tag: int) -> str:
    """The VR pydicom's dictionary gives a tag ("" when unknown), for implicit undefined lengths."""
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def _meta(data: bytes | bytearray | memoryview) -> tuple[dict[str, str], int]:
    if len(data) < 144 or bytes(data[128:132]) != b"DICM":
        raise _Fallback
    reader = _Reader(data, implicit=False)
    pos, meta, group_end = 132, {}, -1
    while pos + 8 <= len(data) and data[pos] | data[pos + 1] << 8 == 0x0002:
        tag, vr, length, value = reader.header(pos, len(data))
        if length == _UNDEFINED or value + length > len(data):
            raise _Fallback
        raw = bytes(data[value:value + length])
        if tag == 0x00020000:
            if vr != b"UL" or length != 4:
                raise _Fallback
            group_end = value + length + _U32.unpack(raw)[0]
        want = _META_WANTED.get(tag)
        if want is not None:
            if vr != b"UI":
                raise _Fallback
            meta[want[0]] = _text(raw, "UI")
        pos = value + length
    if pos != group_end or "TransferSyntaxUID" not in meta:
        raise _Fallback
    return meta, pos


def scan(data: bytes | bytearray | memoryview) -> Scan | None:
    """The needed values of a Part-10 object, or None when pydicom must parse it instead."""
    try:
        meta, pos = _meta(data)
        ts = meta["TransferSyntaxUID"]
        if ts not in SUPPORTED_TRANSFER_SYNTAXES or ts == DEFLATED:
            return None
        values: dict[str, Any] = {}
        pixel_pos = _Reader(data, implicit=ts == IMPLICIT_LE).dataset(pos, len(data), WANTED, values, 0, True)
        return Scan(ts, meta, values, pixel_pos)
    except (_Fallback, struct.error, IndexError, UnicodeDecodeError):
        return None
