"""The C-STORE handler's Part-10 framing matches pynetdicom's ``event.encoded_dataset()`` byte for byte."""

from __future__ import annotations

from io import BytesIO
from types import SimpleNamespace
from typing import Any, cast

import pytest
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from diff3m.node import handlers
from diff3m.node.syntaxes import EXPLICIT_LE, IMPLICIT_LE, JPEG_2000


def _pynetdicom(sop_class: str, sop_uid: str, ts: str, body: bytes) -> bytes:
    meta = create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_uid),
                            transfer_syntax=UID(ts))
    return b"\0" * 128 + b"DICM" + encode_file_meta(meta) + body


@pytest.mark.parametrize("sop_uid", ["1.2.3", "1.2.34", "1.2.826.0.1.3680043.8.498.1" + "1" * 36])
@pytest.mark.parametrize("ts", [EXPLICIT_LE, IMPLICIT_LE, JPEG_2000])
def test_received_object_is_what_encoded_dataset_gives(sop_uid: str, ts: str) -> None:
    body = b"\x08\x00\x16\x00UI\x04\x001.2\x00" * 3
    event = SimpleNamespace(
        request=SimpleNamespace(AffectedSOPClassUID=UID("1.2.840.10008.5.1.4.1.1.1.1"),
                                AffectedSOPInstanceUID=UID(sop_uid), DataSet=BytesIO(body)),
        context=SimpleNamespace(transfer_syntax=UID(ts)),
    )
    got = handlers.received_object(cast(Any, event))
    assert bytes(got) == _pynetdicom("1.2.840.10008.5.1.4.1.1.1.1", sop_uid, ts, body)
    event.request.DataSet.write(b"more")  # the handler released its view of the buffer
