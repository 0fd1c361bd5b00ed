"""DIMSE handlers of the listener: one small function per service, each returning a status."""

from __future__ import annotations

import logging
import struct
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.events import Event

from diff3m.config import Settings
from diff3m.node.ingest import OUT_OF_RESOURCES, ingest_bytes

log = logging.getLogger(__name__)


def handle_echo(event: Event) -> int:
    """C-ECHO: always Success."""
    return 0x0000


def _element(tag: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR LE element of the file meta group (OB has a 4-byte length)."""
    if vr == b"OB":
        return struct.pack("<HH2sxxI", tag >> 16, tag & 0xFFFF, vr, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


_IMPLEMENTATION = (_element(0x00020012, b"UI", _padded(str(PYNETDICOM_IMPLEMENTATION_UID), b"\0"))
                   + _element(0x00020013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")))


def file_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information, byte for byte as ``event.encoded_dataset()``.

    Built by hand: pydicom's writer cost more per image than the rest of the parse.
    """
    group = (_element(0x00020001, b"OB", b"\0\1")
             + _element(0x00020002, b"UI", _padded(sop_class, b"\0"))
             + _element(0x00020003, b"UI", _padded(sop_instance, b"\0"))
             + _element(0x00020010, b"UI", _padded(transfer_syntax, b"\0"))
             + _IMPLEMENTATION)
    return b"\0" * 128 + b"DICM" + _element(0x00020000, b"UL", struct.pack("<I", len(group))) + group


def received_object(event: Event) -> bytearray:
    """The received C-STORE data set as a Part-10 object: one copy of the P-DATA buffer, no decode."""
    request: Any = event.request
    header = file_header(str(request.AffectedSOPClassUID), str(request.AffectedSOPInstanceUID),
                         str(event.context.transfer_syntax))
    data = bytearray(header)
    with request.DataSet.getbuffer() as body:
        data += body
    return data


def handle_store(event: Event, settings: Settings, db_url: str) -> int | Dataset:
    """C-STORE: write the dataset as received (never decoded), answer only once it is durable."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        data = received_object(event)
        outcome = ingest_bytes(settings, db_url, data, calling_aet=calling, check_sop_class=False)
    except Exception as err:  # never let a bug crash the association: answer a failure
        log.exception("C-STORE from %s failed: %s", calling, type(err).__name__)
        return _status(OUT_OF_RESOURCES, "internal error while storing")
    if outcome.ok:
        return 0x0000
    return _status(outcome.status, outcome.error or "refused")


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def store_handler_args(settings: Settings, db_url: str) -> list[Any]:
    """The extra arguments bound to ``handle_store``."""
    return [settings, db_url]
