"""Durable ingest of one received Part-10 object: parse the few tags needed, fsync to disk, commit the row.

The same function serves C-STORE (``scp.py``) and STOW-RS (``dicomweb.py``). Success is only
returned after the file is fsynced in place and the database row is committed.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from diff3m.config import Settings
from diff3m.db.models import AuditEvent, Instance, Study, StudyStatus, utcnow
from diff3m.db.session import session_factory
from diff3m.node import rawscan, storage
from diff3m.node.group_commit import GroupCommitter, committer_for
from diff3m.node.syntaxes import DEFLATED, IMPLICIT_LE, SUPPORTED_TRANSFER_SYNTAXES
from diff3m.node.views import classify

log = logging.getLogger(__name__)

# Status codes (PS3.4 Annex B / PS3.7 C) used by C-STORE and as STOW-RS FailureReason
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900  # missing / invalid attributes, or not matching the SOP class
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122

NEEDED_TAGS = [
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "PatientID", "IssuerOfPatientID", "AccessionNumber", "StudyDate", "Modality", "ViewPosition",
    "ViewCodeSequence", "SeriesDescription", "ProtocolName", "Rows", "Columns", "BitsAllocated",
    "SamplesPerPixel", "NumberOfFrames",
]
_PIXEL_TAG = b"\xe0\x7f\x10\x00"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


class IngestError(Exception):
    """A dataset we refuse, with the DIMSE status to answer and a comment for the sender."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class InstanceInfo:
    """The tags ingest needs from one object (pixels never decoded)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax: str
    patient_id: str | None
    issuer_of_patient_id: str | None
    accession_number: str | None
    study_date: str | None
    modality: str | None
    view_position: str | None
    frontal: bool


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one object; ``status`` is the DIMSE status to answer."""

    status: int
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    sop_class_uid: str | None = None
    instance_id: int | None = None
    study_id: int | None = None
    path: str | None = None  # relative to storage_dir
    duplicate: bool = False
    reopened: bool = False  # a late instance re-opened a completed study (revision bumped)
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the object is (or already was) stored."""
        return self.status == SUCCESS


def _text(ds: Any, keyword: str, limit: int) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    text = str(value).strip().strip("\x00").strip()
    return text[:limit] or None


def _uid(ds: Any, keyword: str) -> str:
    value = ds.get(keyword)
    text = str(value).strip().strip("\x00").strip() if value is not None else ""
    if not text:
        raise IngestError(DATASET_MISMATCH, f"missing required attribute {keyword}")
    if len(text) > storage.MAX_UID_LEN:
        raise IngestError(DATASET_MISMATCH, f"{keyword} longer than 64 characters")
    if any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
        raise IngestError(DATASET_MISMATCH, f"{keyword} has characters outside the UID repertoire")
    return text


def _int(ds: Any, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, default)
    try:
        if value is None or value == "":
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise IngestError(DATASET_MISMATCH, f"missing or invalid {keyword}") from None


def _check_pixels(data: bytes, pos: int, ts: str, ds: Any) -> None:
    """Pixel Data must be present, complete and large enough for Rows x Columns x frames."""
    rows, cols = _int(ds, "Rows"), _int(ds, "Columns")
    bits, spp = _int(ds, "BitsAllocated"), _int(ds, "SamplesPerPixel", 1)
    frames = _int(ds, "NumberOfFrames", 1)
    if min(rows, cols, bits, spp, frames) <= 0:
        raise IngestError(DATASET_MISMATCH, "Rows, Columns, BitsAllocated, SamplesPerPixel must be > 0")
    if ts == DEFLATED:
        pix = pydicom.dcmread(BytesIO(data), specific_tags=["PixelData"]).get("PixelData")
        if not pix:
            raise IngestError(DATASET_MISMATCH, "missing Pixel Data")
        return
    if data[pos:pos + 4] != _PIXEL_TAG:
        raise IngestError(DATASET_MISMATCH, "missing Pixel Data")
    if ts == IMPLICIT_LE:
        header, (length,) = 8, struct.unpack_from("<I", data, pos + 4) if len(data) >= pos + 8 else (None,)
    else:
        header = 12
        length = struct.unpack_from("<I", data, pos + 8)[0] if len(data) >= pos + 12 else None
    if length is None:
        raise IngestError(CANNOT_UNDERSTAND, "truncated Pixel Data element")
    if length == 0xFFFFFFFF:  # encapsulated: items, then a sequence delimiter
        if data[pos + header:pos + header + 4] != b"\xfe\xff\x00\xe0" or data.rfind(_SEQ_DELIM) < pos:
            raise IngestError(CANNOT_UNDERSTAND, "truncated or malformed encapsulated Pixel Data")
        return
    if pos + header + length > len(data):
        raise IngestError(CANNOT_UNDERSTAND, "truncated Pixel Data")
    if bits % 8 == 0 and length < rows * cols * spp * frames * (bits // 8):
        raise IngestError(DATASET_MISMATCH, "Pixel Data shorter than Rows x Columns x BitsAllocated")


def parse(data: bytes, allowed_sop_classes: list[str] | None = None, *,
          fast: bool = True) -> InstanceInfo:
    """Read the tags ingest needs from a Part-10 byte string; raise IngestError when unusable.

    ``fast``: try the raw tag scanner first (``rawscan.scan``); pydicom parses whatever it declines.
    """
    scanned = rawscan.scan(data) if fast else None
    ds: Any
    meta: Any
    if scanned is not None:
        ds, meta, ts, pos = scanned.values, scanned.meta, scanned.transfer_syntax, scanned.pixel_pos
    else:
        fp = BytesIO(data)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=NEEDED_TAGS)
            pos = fp.tell()
            meta = ds.file_meta
            ts = str(meta.TransferSyntaxUID).strip("\x00 ")
        except IngestError:
            raise
        except Exception as err:  # pydicom raises many kinds on garbage input
            raise IngestError(CANNOT_UNDERSTAND, f"cannot parse DICOM: {type(err).__name__}") from None
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise IngestError(TRANSFER_SYNTAX_NOT_SUPPORTED, f"transfer syntax {ts[:64]} not supported")
    try:
        sop_class = _uid(ds, "SOPClassUID")
        sop_uid = _uid(ds, "SOPInstanceUID")
        study_uid = _uid(ds, "StudyInstanceUID")
        series_uid = _uid(ds, "SeriesInstanceUID")
        meta_class = str(meta.get("MediaStorageSOPClassUID", sop_class)).strip("\x00 ")
        meta_sop = str(meta.get("MediaStorageSOPInstanceUID", sop_uid)).strip("\x00 ")
        if meta_class != sop_class or meta_sop != sop_uid:
            raise IngestError(DATASET_MISMATCH, "SOP Class/Instance UID differ from the request")
        if allowed_sop_classes is not None and sop_class not in allowed_sop_classes:
            raise IngestError(SOP_CLASS_NOT_SUPPORTED, f"SOP class {sop_class} not accepted here")
        _check_pixels(data, pos, ts, ds)
        codes = [(str(item.get("CodeValue", "")), str(item.get("CodeMeaning", "")))
                 for item in ds.get("ViewCodeSequence") or []]
        descriptions = [t for t in (_text(ds, "SeriesDescription", 64), _text(ds, "ProtocolName", 64)) if t]
        view = classify(_text(ds, "ViewPosition", 16), codes, descriptions)
        return InstanceInfo(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, study_uid=study_uid, series_uid=series_uid,
            transfer_syntax=ts, patient_id=_text(ds, "PatientID", 64),
            issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
            accession_number=_text(ds, "AccessionNumber", 16), study_date=_text(ds, "StudyDate", 8),
            modality=_text(ds, "Modality", 16), view_position=view.position, frontal=view.frontal,
        )
    except IngestError:
        raise
    except Exception as err:
        raise IngestError(CANNOT_UNDERSTAND, f"cannot read attributes: {type(err).__name__}") from None


def _insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> None:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(postgresql.insert(table).values(**values).on_conflict_do_nothing())
    else:
        session.execute(sqlite.insert(table).values(**values).on_conflict_do_nothing())


_EXISTING = select(Instance.id, Instance.study_id, Instance.path).where(
    Instance.sop_instance_uid == bindparam("sop_uid")
)


def _existing(session: Session, sop_uid: str) -> tuple[int, int, str] | None:
    row = session.connection().execute(_EXISTING, {"sop_uid": sop_uid}).first()
    return (row[0], row[1], row[2]) if row else None


def _write_rows(session: Session, info: InstanceInfo, relpath: str, size: int,
                calling_aet: str | None, now: datetime) -> tuple[int, int, bool]:
    """Upsert the study, add the instance, re-open a completed study (no commit). Returns ids + reopened."""
    _insert_ignore(session, Study.__table__, {
        "study_uid": info.study_uid, "patient_id": info.patient_id,
        "issuer_of_patient_id": info.issuer_of_patient_id, "accession_number": info.accession_number,
        "study_date": info.study_date, "modality": info.modality, "calling_aet": calling_aet,
        "status": StudyStatus.RECEIVING.value, "revision": 0, "priority": "routine", "attempts": 0,
        "timings": {}, "last_instance_at": now, "created_at": now, "updated_at": now,
    })
    study_id = session.scalar(select(Study.id).where(Study.study_uid == info.study_uid))
    assert study_id is not None
    reopened = session.execute(
        update(Study).where(Study.id == study_id, Study.status != StudyStatus.RECEIVING)
        .values(status=StudyStatus.RECEIVING, revision=Study.revision + 1, last_instance_at=now,
                completed_at=None, attempts=0, error=None)
    ).rowcount == 1  # type: ignore[attr-defined]
    if not reopened:
        session.execute(update(Study).where(Study.id == study_id).values(last_instance_at=now))
    instance_id = session.execute(
        Instance.__table__.insert().returning(Instance.__table__.c.id),  # type: ignore[attr-defined]
        {"study_id": study_id, "sop_instance_uid": info.sop_instance_uid, "series_uid": info.series_uid,
         "sop_class_uid": info.sop_class_uid, "transfer_syntax": info.transfer_syntax, "path": relpath,
         "size": size, "view_position": info.view_position, "frontal": info.frontal,
         "calling_aet": calling_aet, "received_at": now},
    ).scalar_one()
    if reopened:
        session.add(AuditEvent(kind="study_reopened", study_id=study_id,
                               detail={"sop_instance_uid": info.sop_instance_uid}))
        session.flush()
    return instance_id, study_id, reopened


def _commit_rows(session: Session, info: InstanceInfo, relpath: str, size: int,
                 calling_aet: str | None, now: datetime) -> tuple[int, int, bool]:
    """Write the rows of one instance and commit them on ``session``."""
    result = _write_rows(session, info, relpath, size, calling_aet, now)
    session.commit()
    return result


def ingest_bytes(settings: Settings, session_or_url: Session | str | None, data: bytes,
                 calling_aet: str | None = None, check_sop_class: bool = True) -> IngestOutcome:
    """Store one Part-10 object durably and record it; never raises for bad input.

    ``session_or_url``: an open Session (committed here), a database URL, or None for
    ``settings.database.url``.
    """
    try:
        info = parse(data, settings.node.sop_classes if check_sop_class else None)
    except IngestError as err:
        log.warning("rejected object from %s: status 0x%04X %s", calling_aet, err.status, err.comment)
        return IngestOutcome(status=err.status, error=err.comment)
    own = not isinstance(session_or_url, Session)
    session = (session_factory(session_or_url or settings.database.url)() if own  # type: ignore[arg-type]
               else session_or_url)
    assert isinstance(session, Session)
    # Rows of instances received concurrently share one commit when ingest owns the session.
    committer = committer_for(str(session_or_url or settings.database.url), _write_rows) if own else None
    try:
        return _store(settings, session, info, data, calling_aet, committer)
    finally:
        if own:
            session.close()


def _outcome(info: InstanceInfo, status: int, **kw: Any) -> IngestOutcome:
    return IngestOutcome(status=status, sop_instance_uid=info.sop_instance_uid, study_uid=info.study_uid,
                         series_uid=info.series_uid, sop_class_uid=info.sop_class_uid, **kw)


def _store(settings: Settings, session: Session, info: InstanceInfo, data: bytes,
           calling_aet: str | None, committer: GroupCommitter | None = None) -> IngestOutcome:
    try:
        found = _existing(session, info.sop_instance_uid)
    except SQLAlchemyError as err:
        session.rollback()
        log.error("database unavailable for %s: %s", info.sop_instance_uid, type(err).__name__)
        return _outcome(info, OUT_OF_RESOURCES, error="database unavailable")
    if found:
        log.info("duplicate %s (already stored)", info.sop_instance_uid)
        return _outcome(info, SUCCESS, instance_id=found[0], study_id=found[1], path=found[2],
                             duplicate=True)
    relpath = storage.instance_relpath(info.study_uid, info.series_uid, info.sop_instance_uid)
    storage_dir = Path(settings.node.storage_dir)
    try:
        final = storage.write_durable(storage_dir, relpath, data)
    except OSError as err:
        log.error("cannot write %s: %s", info.sop_instance_uid, err.strerror or type(err).__name__)
        return _outcome(info, OUT_OF_RESOURCES, error="cannot write to storage")
    try:
        commit = committer.commit if committer is not None else partial(_commit_rows, session)
        instance_id, study_id, reopened = commit(info, relpath, len(data), calling_aet, utcnow())
    except IntegrityError:  # a concurrent association stored the same SOP Instance first
        session.rollback()
        found = _existing(session, info.sop_instance_uid)
        if found:
            return _outcome(info, SUCCESS, instance_id=found[0], study_id=found[1], path=found[2],
                                 duplicate=True)
        storage.remove_quietly(final)
        return _outcome(info, OUT_OF_RESOURCES, error="database constraint failure")
    except SQLAlchemyError as err:
        session.rollback()
        storage.remove_quietly(final)
        log.error("database commit failed for %s: %s", info.sop_instance_uid, type(err).__name__)
        return _outcome(info, OUT_OF_RESOURCES, error="database unavailable")
    if reopened:
        log.info("late instance %s re-opened study %s", info.sop_instance_uid, info.study_uid)
    log.debug("stored %s in study %s", info.sop_instance_uid, info.study_uid)
    return _outcome(info, SUCCESS, instance_id=instance_id, study_id=study_id, path=relpath,
                         reopened=reopened)


def read_dataset(settings: Settings, relpath: str) -> Dataset:
    """Read a stored instance fully (pixels decoded on access through the pydicom plugins)."""
    return pydicom.dcmread(storage.resolve(Path(settings.node.storage_dir), relpath))

