"""Small source CR/DX images and synthetic results for the output builder tests."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from diff3m.records import EhrRecord, FieldValue, Roi, ScoreResult

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class SourceSpec:
    """How to make one source image."""

    modality: str = "CR"
    rows: int = 96
    columns: int = 80
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    pixel_spacing: tuple[float, float] | None = (0.143, 0.143)
    charset: str | None = None
    patient_name: str = "DOE^JOHN"
    window: bool = True
    bad_values: bool = False  # invalid values a real modality might send


def make_source(spec: SourceSpec = SourceSpec(), study_uid: str | None = None, instance: int = 1,
                seed: int = 0) -> Dataset:
    """A source image, written to bytes and read back (text arrives encoded in its charset)."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = UID(CR_STORAGE if spec.modality == "CR" else DX_PRESENTATION_STORAGE)
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = UID(study_uid) if study_uid else generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    if spec.charset:
        ds.SpecificCharacterSet = spec.charset
    ds.Modality = spec.modality
    ds.PatientName = spec.patient_name
    ds.PatientID = "P12345"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.PatientWeight = "71.5"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.StudyID = "S1"
    ds.AccessionNumber = "ACC001"
    ds.ReferringPhysicianName = "REF^DOC"
    ds.StudyDescription = "XR CHEST PA"
    ds.Manufacturer = "Acme Imaging"
    ds.InstitutionName = "General Hospital"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    if spec.bad_values:
        ds.PatientName = "ANONYMOUS"
        ds.PatientSex = "UNKNOWN"
        ds.PatientAge = "63"
        ds.PatientWeight = "0"
        ds.PatientBirthDate = "19601341"
        ds.StudyTime = "256100"
        ds.StudyID = "THIS-STUDY-ID-IS-MUCH-TOO-LONG"
        ds.AccessionNumber = ""
        ds.PatientOrientation = ["X", "Y"]
        ds.ImagerPixelSpacing = ["0", "0"]
        ds.WindowCenter = "2048"
        ds.WindowWidth = "0"
    bits_allocated = 16
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = spec.rows, spec.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, spec.bits_stored, spec.bits_stored - 1
    ds.PixelRepresentation = 0
    top = (1 << spec.bits_stored) - 1
    yy = np.linspace(0.0, 1.0, spec.rows, dtype=np.float32)[:, None]
    body = 0.2 + 0.6 * yy * np.ones((1, spec.columns), dtype=np.float32)
    pixels = np.clip(body + rng.normal(0, 0.02, body.shape), 0, 1) * top
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    if spec.pixel_spacing and not spec.bad_values:
        key = "ImagerPixelSpacing" if spec.modality == "DX" else "PixelSpacing"
        setattr(ds, key, [f"{spec.pixel_spacing[0]:g}", f"{spec.pixel_spacing[1]:g}"])
    if spec.window and not spec.bad_values:
        ds.WindowCenter = str(top // 2)
        ds.WindowWidth = str(top)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return dcmread(buf)


def make_result(rows: int, columns: int, *, abnormal: bool = True, model_version: str = "0.3.1",
                ehr_used: bool = True, roi: bool = True) -> ScoreResult:
    """A synthetic result: a Gaussian hot spot with its ROI around it."""
    cy, cx = rows * 0.6, columns * 0.4
    sigma = max(2.0, min(rows, columns) / 12)
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    amap = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)
    box = Roi(int(cx - 2 * sigma), int(cy - 2 * sigma), int(4 * sigma), int(4 * sigma))
    return ScoreResult(
        score=0.731 if abnormal else 0.102,
        abnormal=abnormal,
        threshold=0.5,
        anomaly_map=amap,
        scores={"mse": 0.012, "max_abs": 0.93, "smoothed_max": 0.731},
        roi=box if roi else None,
        model_name="Diff3M",
        model_version=model_version,
        ehr_used=ehr_used,
        seconds=1.25,
        params={"steps": 10, "noise_level": 0.3, "profile": "tiny", "device": "cpu"},
    )


def make_ehr(available: bool = True) -> EhrRecord:
    """An EHR that was fetched, or one that could not be (with the reason)."""
    values: dict[str, FieldValue] = {"sex": "F", "age": 63.0, "view": "PA", "bmi": 24.1, "systolic": None}
    if available:
        return EhrRecord(values=values, sources={"bmi": ["Observation/1"]})
    return EhrRecord.unavailable("FHIR server unreachable: connection refused (Zürich node)",
                                 values={"sex": "F", "age": 63.0, "view": "PA"})
