"""The C-STORE client's guard against pynetdicom's association thread taking a DIMSE response."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation  # type: ignore[attr-defined]

from diff3m.node.scp import Listener
from diff3m.node.scu import keep_responses_for_sender


@pytest.fixture
def assoc(listener: Listener) -> Iterator[Association]:
    ae = AE(ae_title="SCUTEST")
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ["1.2.840.10008.1.2.1"])
    ae.dimse_timeout = 2
    a = ae.associate("127.0.0.1", listener.port, ae_title="DIFF3M")
    assert a.is_established
    try:
        yield a
    finally:
        a.abort()
        ae.shutdown()


def _store_response() -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 1
    rsp.AffectedSOPClassUID = DigitalXRayImageStorageForPresentation
    rsp.AffectedSOPInstanceUID = "1.2.3.4"
    rsp.Status = 0x0000
    return rsp


def test_a_response_on_the_queue_waits_for_the_sender(assoc: Association) -> None:
    keep_responses_for_sender(assoc)
    rsp = _store_response()
    assoc.dimse.msg_queue.put((1, rsp))  # as if the peer answered while the association thread polls
    time.sleep(0.2)  # the association thread polls every millisecond
    assert assoc.dimse.get_msg(block=False) == (None, None)  # the thread's own poll is refused it
    assert assoc.dimse.get_msg(block=True) == (1, rsp)  # ... and the sender gets it


def test_without_the_guard_the_association_thread_takes_it(assoc: Association) -> None:
    """The race the guard closes: an unpaused association thread takes any response it sees."""
    assoc.dimse.msg_queue.put((1, _store_response()))
    time.sleep(0.2)
    assert assoc.dimse.get_msg(block=False) == (None, None)  # gone: a sender would wait for nothing
