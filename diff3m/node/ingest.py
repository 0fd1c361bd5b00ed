"""Durable ingest of one received Part-10 object: parse the few tags needed, fsync to disk, commit the row.

The same function serves C-STORE (``scp.py``) and STOW-RS (``dicomweb.py``). Success is only
returned after the file is fsynced in place and the database row is committed.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import Connection, Engine, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from diff3m.config import Settings
from diff3m.db.models import AuditEvent, Instance, Study, StudyStatus, utcnow
from diff3m.db.session import get_engine
from diff3m.node import rawscan, storage
from diff3m.node.group_commit import committer_for
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


def _check_pixels(data: bytes | bytearray, pos: int, ts: str, ds: Any) -> None:
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


def parse(data: bytes | bytearray, allowed_sop_classes: list[str] | None = None, *,
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


_STUDIES = cast(Table, Study.__table__)
_INSTANCES = cast(Table, Instance.__table__)
_AUDIT = cast(Table, AuditEvent.__table__)
# Built once: SQLAlchemy caches their compiled form, so the hot path only binds parameters.
_EXISTING = select(_INSTANCES.c.id, _INSTANCES.c.study_id, _INSTANCES.c.path).where(
    _INSTANCES.c.sop_instance_uid == bindparam("sop_uid")
)
_EXISTING_MANY = select(_INSTANCES.c.sop_instance_uid, _INSTANCES.c.id, _INSTANCES.c.study_id,
                        _INSTANCES.c.path).where(
    _INSTANCES.c.sop_instance_uid.in_(bindparam("sop_uids", expanding=True))
)
_STUDY_INSERT = {
    "postgresql": postgresql.insert(_STUDIES).on_conflict_do_nothing(),
    "sqlite": sqlite.insert(_STUDIES).on_conflict_do_nothing(),
}
_STUDY_ID = select(_STUDIES.c.id).where(_STUDIES.c.study_uid == bindparam("study_uid"))
_REOPEN = (
    update(_STUDIES)
    .where(_STUDIES.c.id == bindparam("sid"), _STUDIES.c.status != StudyStatus.RECEIVING)
    .values(status=StudyStatus.RECEIVING, revision=_STUDIES.c.revision + 1,
            last_instance_at=bindparam("t_now"), completed_at=None, attempts=0, error=None)
)
_TOUCH = update(_STUDIES).where(_STUDIES.c.id == bindparam("sid")).values(
    last_instance_at=bindparam("t_now"))
_INSTANCE_INSERT = _INSTANCES.insert().returning(_INSTANCES.c.id, sort_by_parameter_order=True)
_AUDIT_INSERT = _AUDIT.insert()


@dataclass(frozen=True)
class _Job:
    """One received instance whose file is written and fsynced in ``storage_dir/tmp``."""

    info: InstanceInfo
    storage_dir: Path
    tmp: Path
    relpath: str
    size: int
    calling_aet: str | None
    now: datetime


@dataclass(frozen=True)
class _Stored:
    instance_id: int
    study_id: int
    path: str
    duplicate: bool = False
    reopened: bool = False


def _existing(conn: Connection, sop_uid: str) -> tuple[int, int, str] | None:
    row = conn.execute(_EXISTING, {"sop_uid": sop_uid}).first()
    return (row[0], row[1], row[2]) if row else None


def _existing_on(engine: Engine, sop_uid: str) -> tuple[int, int, str] | None:
    with engine.connect() as conn:
        return _existing(conn, sop_uid)


def _write_studies(conn: Connection, jobs: list[_Job]) -> dict[str, tuple[int, int]]:
    """Upsert each study of ``jobs`` once and re-open completed ones: study UID -> (id, re-opening job)."""
    insert_study = _STUDY_INSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    studies: dict[str, tuple[int, int]] = {}
    for index, job in enumerate(jobs):
        info = job.info
        if info.study_uid in studies:
            continue
        now = max(j.now for j in jobs if j.info.study_uid == info.study_uid)
        conn.execute(insert_study, {
            "study_uid": info.study_uid, "patient_id": info.patient_id,
            "issuer_of_patient_id": info.issuer_of_patient_id, "accession_number": info.accession_number,
            "study_date": info.study_date, "modality": info.modality, "calling_aet": job.calling_aet,
            "status": StudyStatus.RECEIVING.value, "revision": 0, "priority": "routine", "attempts": 0,
            "timings": {}, "last_instance_at": now, "created_at": now, "updated_at": now,
        })
        study_id = conn.execute(_STUDY_ID, {"study_uid": info.study_uid}).scalar_one()
        reopened = conn.execute(_REOPEN, {"sid": study_id, "t_now": now}).rowcount == 1
        if reopened:
            conn.execute(_AUDIT_INSERT, {"kind": "study_reopened", "study_id": study_id,
                                         "detail": {"sop_instance_uid": info.sop_instance_uid}})
        else:
            conn.execute(_TOUCH, {"sid": study_id, "t_now": now})
        studies[info.study_uid] = (study_id, index if reopened else -1)
    return studies


def _write_batch(conn: Connection, jobs: list[_Job]) -> list[_Stored]:
    """Store a batch inside the connection's transaction (the caller commits).

    One query finds the SOP Instance UIDs already stored (those jobs are duplicates: the first copy
    is kept); the new files are renamed into place and each folder is fsynced once; then each
    study is upserted once (a completed study is re-opened, counted for the first of its instances
    in the batch, as one by one) and the instance rows go in with one multi-row insert. The same
    SOP Instance twice in one batch is stored once, the later job answered as a duplicate.
    """
    uids = [j.info.sop_instance_uid for j in jobs]
    found = {row[0]: (row[1], row[2], row[3]) for row in conn.execute(_EXISTING_MANY, {"sop_uids": uids})}
    first: dict[str, int] = {}
    new: list[int] = []
    for i, uid in enumerate(uids):
        if uid not in found and uid not in first:
            first[uid] = i
            new.append(i)
    finals = [storage.place(jobs[i].storage_dir, jobs[i].tmp, jobs[i].relpath) for i in new]
    storage.fsync_dirs(f.parent for f in finals)
    stored: dict[int, _Stored] = {}
    if new:
        fresh = [jobs[i] for i in new]
        studies = _write_studies(conn, fresh)
        rows = [
            {"study_id": studies[j.info.study_uid][0], "sop_instance_uid": j.info.sop_instance_uid,
             "series_uid": j.info.series_uid, "sop_class_uid": j.info.sop_class_uid,
             "transfer_syntax": j.info.transfer_syntax, "path": j.relpath, "size": j.size,
             "view_position": j.info.view_position, "frontal": j.info.frontal, "calling_aet": j.calling_aet,
             "received_at": j.now}
            for j in fresh
        ]
        ids = [row[0] for row in conn.execute(_INSTANCE_INSERT, rows)]
        for k, (i, job) in enumerate(zip(new, fresh, strict=True)):
            study_id, reopener = studies[job.info.study_uid]
            stored[i] = _Stored(ids[k], study_id, job.relpath, reopened=reopener == k)
    out = []
    for i, uid in enumerate(uids):
        if uid in found:
            out.append(_Stored(*found[uid], duplicate=True))
        elif first[uid] != i:
            same = stored[first[uid]]
            out.append(_Stored(same.instance_id, same.study_id, same.path, duplicate=True))
        else:
            out.append(stored[i])
    return out


def _commit_in_session(session: Session, job: _Job) -> _Stored:
    """Store one job and commit on ``session``."""
    (result,) = _write_batch(session.connection(), [job])
    session.commit()
    return result


def ingest_bytes(settings: Settings, session_or_url: Session | str | None, data: bytes | bytearray,
                 calling_aet: str | None = None, check_sop_class: bool = True) -> IngestOutcome:
    """Store one Part-10 object durably and record it; never raises for bad input.

    ``session_or_url``: an open Session (committed here), a database URL, or None for
    ``settings.database.url``. With a URL the instances received concurrently share one
    transaction, one commit and one folder fsync (``group_commit``).
    """
    try:
        info = parse(data, settings.node.sop_classes if check_sop_class else None)
    except IngestError as err:
        log.warning("rejected object from %s: status 0x%04X %s", calling_aet, err.status, err.comment)
        return IngestOutcome(status=err.status, error=err.comment)
    if isinstance(session_or_url, Session):
        session = session_or_url
        return _store(settings, info, data, calling_aet, partial(_commit_in_session, session),
                      lambda uid: _existing(session.connection(), uid), session.rollback)
    url = session_or_url or settings.database.url
    engine = get_engine(url)
    return _store(settings, info, data, calling_aet, committer_for(url, _write_batch).commit,
                  partial(_existing_on, engine), lambda: None)


def _outcome(info: InstanceInfo, status: int, **kw: Any) -> IngestOutcome:
    return IngestOutcome(status=status, sop_instance_uid=info.sop_instance_uid, study_uid=info.study_uid,
                         series_uid=info.series_uid, sop_class_uid=info.sop_class_uid, **kw)


def _store(settings: Settings, info: InstanceInfo, data: bytes | bytearray, calling_aet: str | None,
           commit: Callable[[_Job], _Stored], lookup: Callable[[str], tuple[int, int, str] | None],
           rollback: Callable[[], None]) -> IngestOutcome:
    """Write + fsync the temp file here (in parallel across associations), then hand it to ``commit``."""
    storage_dir = Path(settings.node.storage_dir)
    relpath = storage.instance_relpath(info.study_uid, info.series_uid, info.sop_instance_uid)
    try:
        tmp = storage.write_temp(storage_dir, data)
    except OSError as err:
        log.error("cannot write %s: %s", info.sop_instance_uid, err.strerror or type(err).__name__)
        return _outcome(info, OUT_OF_RESOURCES, error="cannot write to storage")
    try:
        done = commit(_Job(info, storage_dir, tmp, relpath, len(data), calling_aet, utcnow()))
    except (SQLAlchemyError, OSError) as err:
        rollback()
        try:  # stored meanwhile (a concurrent association or process stored the same SOP Instance)?
            found = lookup(info.sop_instance_uid)
        except SQLAlchemyError:
            found = None
        if found and isinstance(err, IntegrityError):
            return _outcome(info, SUCCESS, instance_id=found[0], study_id=found[1], path=found[2],
                            duplicate=True)
        if not found:  # nothing refers to the file: undo the write
            storage.remove_quietly(storage.inside(storage_dir, relpath))
        if isinstance(err, OSError):
            log.error("cannot store %s: %s", info.sop_instance_uid, err.strerror or type(err).__name__)
            return _outcome(info, OUT_OF_RESOURCES, error="cannot write to storage")
        log.error("database commit failed for %s: %s", info.sop_instance_uid, type(err).__name__)
        error = "database constraint failure" if isinstance(err, IntegrityError) else "database unavailable"
        return _outcome(info, OUT_OF_RESOURCES, error=error)
    finally:
        storage.remove_quietly(tmp)  # gone when moved into place; a duplicate's copy is dropped here
    if done.duplicate:
        log.info("duplicate %s (already stored)", info.sop_instance_uid)
    elif done.reopened:
        log.info("late instance %s re-opened study %s", info.sop_instance_uid, info.study_uid)
    log.debug("stored %s in study %s", info.sop_instance_uid, info.study_uid)
    return _outcome(info, SUCCESS, instance_id=done.instance_id, study_id=done.study_id, path=done.path,
                    duplicate=done.duplicate, reopened=done.reopened)


def read_dataset(settings: Settings, relpath: str) -> Dataset:
    """Read a stored instance fully (pixels decoded on access through the pydicom plugins)."""
    return pydicom.dcmread(storage.resolve(Path(settings.node.storage_dir), relpath))

