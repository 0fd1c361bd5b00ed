"""Rows and files for the web tests: synthetic chest radiographs, results, outputs and deliveries."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session

from diff3m.config import Settings, load_settings
from diff3m.db.models import (
    Delivery,
    DeliveryKind,
    DeliveryStatus,
    EhrSnapshot,
    InferenceResult,
    Instance,
    OutputObject,
    Priority,
    Study,
    StudyStatus,
)
from diff3m.db.session import session_scope
from diff3m.node.storage import instance_relpath

PX = 192
CRImageStorage = "1.2.840.10008.5.1.4.1.1.1"


def make_settings(db_url: str, tmp: Path, **web: object) -> Settings:
    """Settings on a test database and storage folder (local queue, loopback web)."""
    return load_settings(
        None,
        database={"url": db_url},
        node={"storage_dir": str(tmp / "storage"), "min_free_disk_mb": 1},
        queue={"broker_url": f"sqla+sqlite:///{tmp / 'queue.sqlite'}"},
        web={"host": "127.0.0.1", "port": 8080, **web},
    )


def chest(px: int = PX, nodule: tuple[float, float] | None = None, seed: int = 0) -> np.ndarray:
    """A crude frontal chest radiograph (12-bit, MONOCHROME2): body, lungs, spine, ribs, a nodule."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:px, 0:px] / px
    img = 600 + 900 * (((x - 0.5) / 0.46) ** 2 + ((y - 0.55) / 0.6) ** 2 < 1)
    for cx in (0.3, 0.7):
        lung = ((x - cx) / 0.17) ** 2 + ((y - 0.48) / 0.3) ** 2 < 1
        img = np.where(lung, img - 650 + 120 * np.sin(y * 60) ** 8, img)
    img = img + 700 * (np.abs(x - 0.5) < 0.045) * (y > 0.15)
    heart = ((x - 0.56) / 0.15) ** 2 + ((y - 0.66) / 0.13) ** 2 < 1
    img = np.where(heart, img + 450, img)
    if nodule is not None:
        img = img + 500 * np.exp(-(((x - nodule[0]) ** 2 + (y - nodule[1]) ** 2) / 0.0025))
    img = img + rng.normal(0, 25, img.shape)
    return np.clip(img, 0, 4095).astype(np.uint16)


def anomaly_map(px: int, nodule: tuple[float, float] | None, strength: float) -> np.ndarray:
    """An anomaly map peaking at the nodule (float32, like the model's output)."""
    y, x = np.mgrid[0:px, 0:px] / px
    m = 0.02 * np.random.default_rng(1).random((px, px))
    if nodule is not None:
        m = m + strength * np.exp(-(((x - nodule[0]) ** 2 + (y - nodule[1]) ** 2) / 0.004))
    return m.astype(np.float32)


def write_cr(path: Path, pixels: np.ndarray, study_uid: str, series_uid: str, sop_uid: str,
             patient_id: str, accession: str, study_date: str) -> None:
    """A minimal valid CR image file."""
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CRImageStorage, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName, ds.PatientID, ds.PatientSex, ds.PatientBirthDate = "Test^Patient", patient_id, "F", ""
    ds.AccessionNumber, ds.StudyDate, ds.StudyTime, ds.Modality = accession, study_date, "101010", "CR"
    ds.ViewPosition, ds.BodyPartExamined = "PA", "CHEST"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def npy(m: np.ndarray) -> bytes:
    """.npy bytes (float16), as the pipeline stores ``InferenceResult.map_data``."""
    buf = io.BytesIO()
    np.save(buf, m.astype(np.float16))
    return buf.getvalue()


@dataclass
class Seed:
    """One study to insert."""

    n: int
    status: StudyStatus = StudyStatus.DONE
    priority: Priority = Priority.ROUTINE
    score: float | None = 0.01
    abnormal: bool | None = False
    threshold: float = 0.05
    study_date: str = "20250110"
    nodule: tuple[float, float] | None = None
    ehr_available: bool | None = True
    with_result: bool = True
    outputs: bool = True
    deliveries: list[tuple[DeliveryStatus, int, str | None]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"fetch_ehr": 0.2, "infer": 3.1, "build": 0.4,
                                                               "deliver": 0.6, "total": 4.5})
    px: int = PX


@dataclass
class Seeded:
    """What was inserted for one Seed."""

    study_uid: str
    study_id: int
    delivery_ids: list[int]
    output_uids: list[str]


EHR_VALUES = {"sex": "F", "age": 63.0, "view": "PA", "bmi": 27.4, "systolic": 141.0, "diastolic": 88.0,
              "height": None, "weight": 74.5}
EHR_SOURCES = {"sex": ["Patient/p1"], "age": ["Patient/p1"], "view": ["dicom:ViewPosition"],
               "bmi": ["Observation/o-bmi"], "systolic": ["Observation/o-bp"],
               "diastolic": ["Observation/o-bp"], "weight": ["Observation/o-wt"]}
EHR_DOWN = "FHIR server unreachable: connection refused"


def _ehr(study_id: int, available: bool) -> EhrSnapshot:
    if available:
        return EhrSnapshot(study_id=study_id, revision=0, available=True, values=EHR_VALUES,
                           sources=EHR_SOURCES)
    return EhrSnapshot(study_id=study_id, revision=0, available=False, reason=EHR_DOWN,
                       values={"sex": "F", "age": None, "view": "PA"},
                       sources={"sex": ["dicom:PatientSex"], "view": ["dicom:ViewPosition"]})


def _result(s: Seed, study_id: int, instance_id: int) -> InferenceResult:
    assert s.score is not None
    roi = {}
    if s.nodule:
        x, y = int(s.nodule[0] * s.px), int(s.nodule[1] * s.px)
        roi = {"x": x - 12, "y": y - 12, "width": 24, "height": 24}
    return InferenceResult(
        study_id=study_id, revision=0, instance_id=instance_id, score=s.score, abnormal=bool(s.abnormal),
        threshold=s.threshold, model_name="Diff3M", model_version="demo-0.1", ehr_used=bool(s.ehr_available),
        map_data=npy(anomaly_map(s.px, s.nodule, 4 * s.score)), roi=roi,
        params={"steps": 10, "noise_level": 400, "device": "cpu"}, seconds=3.1)


def _outputs_and_deliveries(db: Session, s: Seed, study: Study) -> tuple[list[str], list[int]]:
    outs = [OutputObject(study_id=study.id, revision=0, kind=kind, sop_instance_uid=generate_uid(),
                         series_uid=generate_uid(), path=f"outputs/{study.study_uid}/{kind}.dcm")
            for kind in ("sr", "sc")]
    db.add_all(outs)
    db.flush()
    ids = []
    for i, (status, attempts, error) in enumerate(s.deliveries):
        d = Delivery(dedup_key=f"{study.study_uid}:0:results:{i}", study_id=study.id, kind=DeliveryKind.DICOM,
                     destination="PACS" if i == 0 else f"ARCHIVE{i}",
                     payload={"outputs": [o.id for o in outs]},
                     status=status, attempts=attempts, max_attempts=8, last_error=error,
                     delivered_at=datetime.now(UTC) if status == DeliveryStatus.DONE else None)
        db.add(d)
        db.flush()
        ids.append(d.id)
    return [o.sop_instance_uid for o in outs], ids


def seed(settings: Settings, s: Seed) -> Seeded:
    """Insert one study with its instance file, EHR, result, outputs and deliveries."""
    storage = Path(settings.node.storage_dir)
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    patient_id, accession = f"PAT{s.n:04d}", f"ACC{s.n:04d}"
    rel = instance_relpath(study_uid, series_uid, sop_uid)
    write_cr(storage / rel, chest(s.px, s.nodule, s.n), study_uid, series_uid, sop_uid, patient_id,
             accession, s.study_date)
    now = datetime.now(UTC)
    failed = s.status == StudyStatus.FAILED
    with session_scope(settings.database.url) as db:
        study = Study(study_uid=study_uid, patient_id=patient_id, accession_number=accession,
                      study_date=s.study_date, modality="CR", calling_aet="MODALITY", status=s.status,
                      priority=s.priority, score=s.score if s.with_result else None,
                      abnormal=s.abnormal if s.with_result else None,
                      timings=s.timings if s.with_result else {}, attempts=2 if failed else 1,
                      error="inference failed: out of memory" if failed else None,
                      completed_at=now - timedelta(seconds=30), updated_at=now - timedelta(minutes=s.n))
        db.add(study)
        db.flush()
        inst = Instance(study_id=study.id, sop_instance_uid=sop_uid, series_uid=series_uid,
                        sop_class_uid=CRImageStorage, transfer_syntax=ExplicitVRLittleEndian, path=rel,
                        size=(storage / rel).stat().st_size, view_position="PA", frontal=True,
                        calling_aet="MODALITY")
        db.add(inst)
        db.flush()
        if s.ehr_available is not None:
            db.add(_ehr(study.id, s.ehr_available))
        output_uids: list[str] = []
        delivery_ids: list[int] = []
        if s.with_result and s.score is not None:
            db.add(_result(s, study.id, inst.id))
            if s.outputs:
                output_uids, delivery_ids = _outputs_and_deliveries(db, s, study)
        return Seeded(study_uid, study.id, delivery_ids, output_uids)


WORKLIST: list[Seed] = [
    Seed(1, priority=Priority.ROUTINE, score=0.012, abnormal=False, study_date="20250103",
         deliveries=[(DeliveryStatus.DONE, 1, None)]),
    Seed(2, priority=Priority.STAT, score=0.231, abnormal=True, nodule=(0.32, 0.42), study_date="20250105",
         deliveries=[(DeliveryStatus.DONE, 1, None), (DeliveryStatus.DEAD, 8, "association rejected")]),
    Seed(3, priority=Priority.URGENT, score=0.081, abnormal=True, nodule=(0.7, 0.55), study_date="20250107",
         ehr_available=False, deliveries=[(DeliveryStatus.PENDING, 2, "connection refused")]),
    Seed(4, priority=Priority.URGENT, score=0.12, abnormal=True, nodule=(0.66, 0.36), study_date="20250108",
         deliveries=[(DeliveryStatus.DONE, 3, None)]),
    Seed(5, status=StudyStatus.INFERRING, score=None, abnormal=None, with_result=False, study_date="20250110",
         ehr_available=True),
    Seed(6, priority=Priority.ROUTINE, score=0.034, abnormal=False, study_date="20250111"),
    Seed(7, status=StudyStatus.FAILED, score=None, abnormal=None, with_result=False, study_date="20250111",
         ehr_available=None),
]
