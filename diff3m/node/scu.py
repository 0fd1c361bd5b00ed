"""C-STORE client: send many files over one association, proposing each file's syntax plus fallbacks."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context

from diff3m.node.syntaxes import EXPLICIT_LE, IMPLICIT_LE, UNCOMPRESSED

log = logging.getLogger(__name__)
MAX_CONTEXTS = 128


class DeliveryError(Exception):
    """Sending failed; ``retryable`` says whether trying again later may help."""

    retryable = True


class AssociationFailed(DeliveryError):
    """The destination could not be reached or refused the association."""


class StoreRefused(DeliveryError):
    """The destination answered a C-STORE with a failure status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        # out of resources / no answer may pass; a dataset the peer cannot take will not
        permanent = status is not None and (status == 0x0122 or status >> 12 == 0xC or status >> 8 == 0xA9)
        self.retryable = not permanent


class UnsendableFile(DeliveryError):
    """A file cannot be read or its SOP class/syntax was not accepted; retrying will not help."""

    retryable = False


@dataclass(frozen=True)
class FileRef:
    """A file to send and what the association needs to know about it."""

    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


@dataclass
class SendReport:
    """What one association sent."""

    sent: list[str] = field(default_factory=list)  # SOP Instance UIDs
    statuses: dict[str, int] = field(default_factory=dict)
    warnings: int = 0


def inspect_file(path: Path) -> FileRef:
    """Read a file's meta header and SOP UIDs (pixels never read)."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"])
        return FileRef(path, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
    except Exception as err:
        raise UnsendableFile(f"cannot read {path.name}: {type(err).__name__}") from None


def propose_contexts(files: list[FileRef]) -> list[PresentationContext]:
    """One context per (SOP class, compressed syntax) plus one uncompressed context per SOP class."""
    contexts: list[PresentationContext] = []
    seen: set[tuple[str, str]] = set()
    for f in files:
        keys = [(f.sop_class_uid, "uncompressed")]
        if f.transfer_syntax not in UNCOMPRESSED:
            keys.insert(0, (f.sop_class_uid, f.transfer_syntax))
        for key in keys:
            if key in seen:
                continue
            seen.add(key)
            syntaxes = [EXPLICIT_LE, IMPLICIT_LE] if key[1] == "uncompressed" else [key[1]]
            contexts.append(build_context(key[0], syntaxes))
    if len(contexts) > MAX_CONTEXTS:
        raise UnsendableFile(f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS}")
    return contexts


def _dataset_for(ref: FileRef, accepted: dict[tuple[str, str], bool]) -> Path | Dataset:
    if accepted.get((ref.sop_class_uid, ref.transfer_syntax)):
        return ref.path  # sent as stored, never decoded
    plain_ok = any(accepted.get((ref.sop_class_uid, ts)) for ts in UNCOMPRESSED)
    if plain_ok and ref.transfer_syntax in UNCOMPRESSED:
        return pydicom.dcmread(ref.path)
    if plain_ok:
        ds = pydicom.dcmread(ref.path)
        ds.decompress()  # the destination did not accept the compressed syntax
        return ds
    raise UnsendableFile(f"destination accepted no transfer syntax for SOP class {ref.sop_class_uid}")


def keep_responses_for_sender(assoc: Association) -> None:
    """Let only the waiting ``send_*`` call take DIMSE responses off ``assoc``'s queue.

    pynetdicom (3.0.x) pauses its association thread before each ``send_c_store``, but the pause
    races: the thread can be between its checkpoint and its non-blocking poll of the DIMSE queue
    when the sender sees it "paused". Under CPU load it then takes the C-STORE response itself
    ("Received unexpected C-STORE service message"), the sender waits for an answer that never
    comes and the peer's network timeout aborts the association. A storage SCU is never sent
    requests, so the non-blocking poll (only the association thread makes one) is made to leave
    everything but a request on the queue. Call it right after ``associate``, before any send.
    """
    dimse = assoc.dimse
    take = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block:
            _, msg = dimse.peek_msg()
            if msg is None or not msg.is_valid_request:
                return None, None
        return take(block=block)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def send_files(paths: list[Path], host: str, port: int, called_aet: str, calling_aet: str = "DIFF3M",
               ssl_context: ssl.SSLContext | None = None, timeout: float = 30.0,
               max_pdu: int = 262_144) -> SendReport:
    """C-STORE every file over one association; raises a DeliveryError subclass on any failure."""
    refs = [inspect_file(Path(p)) for p in paths]
    report = SendReport()
    if not refs:
        return report
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = max_pdu
    ae.requested_contexts = propose_contexts(refs)
    # server_hostname None: no SNI; peers are verified by certificate chain, not DNS name
    tls_args: Any = (ssl_context, None) if ssl_context is not None else None
    assoc = ae.associate(host, port, ae_title=called_aet, tls_args=tls_args)
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise AssociationFailed(f"association with {called_aet}@{host}:{port} failed ({why})")
    keep_responses_for_sender(assoc)
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): True
                    for cx in assoc.accepted_contexts}
        for ref in refs:
            dataset = _dataset_for(ref, accepted)
            rsp = assoc.send_c_store(dataset)
            status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
            if status is None:
                raise StoreRefused(f"no C-STORE response for {ref.sop_instance_uid}")
            report.statuses[ref.sop_instance_uid] = status
            if status in (0xB000, 0xB007, 0xB006):
                report.warnings += 1
            elif status != 0x0000:
                comment = str(rsp.get("ErrorComment", ""))
                msg = f"C-STORE of {ref.sop_instance_uid} failed: 0x{status:04X} {comment}"
                raise StoreRefused(msg.strip(), status)
            report.sent.append(ref.sop_instance_uid)
        assoc.release()
    except BaseException:
        if assoc.is_established:
            assoc.abort()
        raise
    log.info("sent %d instance(s) to %s@%s:%d", len(report.sent), called_aet, host, port)
    return report
