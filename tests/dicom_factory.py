"""Test helper: valid CR / DX datasets and Part-10 files with chosen pixels, bits, photometric and UIDs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CR_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")

_VIEW_CODES = {  # ViewPosition -> SNOMED-RT view code (CID 4010)
    "PA": ("399348003", "postero-anterior"),
    "AP": ("399182000", "antero-posterior"),
    "LL": ("399173006", "left lateral"),
    "RL": ("399198007", "right lateral"),
}


@dataclass
class Patient:
    """Who the image belongs to (synthetic)."""

    patient_id: str = "PAT001"
    name: str = "TEST^PATIENT"
    birth_date: str = "19600101"
    sex: str = "M"


def gradient(rows: int, cols: int, bits: int = 16, signed: bool = False, seed: int = 0) -> np.ndarray:
    """A deterministic pixel array using the full range of ``bits`` stored bits (plus a little noise)."""
    rng = np.random.default_rng(seed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    ramp = np.linspace(0.0, 1.0, rows * cols).reshape(rows, cols)
    noise = rng.random((rows, cols)) * 0.05
    values = lo + np.clip(ramp * 0.95 + noise, 0, 1) * (hi - lo)
    dtype = (np.int8 if signed else np.uint8) if bits <= 8 else (np.int16 if signed else np.uint16)
    return np.round(values).astype(dtype)


def make_dataset(
    *,
    rows: int = 64,
    cols: int = 64,
    bits: int = 16,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    modality: str = "DX",
    sop_class: str | None = None,
    view_position: str | None = "PA",
    patient: Patient | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    accession: str = "ACC0001",
    pixels: np.ndarray | None = None,
    seed: int = 0,
) -> Dataset:
    """A valid CR or DX (For Presentation / For Processing) dataset with file meta (explicit VR LE)."""
    patient = patient or Patient()
    sop_class = UID(sop_class or (CR_STORAGE if modality == "CR" else DX_PRESENTATION))
    if bits not in range(6, 17):
        raise ValueError("bits must be 6..16")
    if signed and modality != "CR":
        raise ValueError("DX images are unsigned (PixelRepresentation 0); use modality='CR' for signed")
    allocated = 8 if bits <= 8 else 16
    if pixels is None:
        pixels = gradient(rows, cols, bits, signed, seed)
    rows, cols = pixels.shape

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] if modality == "CR" else ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = UID(sop_uid or generate_uid())
    ds.StudyDate = "20240102"
    ds.ContentDate = "20240102"
    ds.StudyTime = "101500"
    ds.ContentTime = "101530"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "Diff3M Test Factory"
    ds.ReferringPhysicianName = ""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = UID(study_uid or generate_uid())
    ds.SeriesInstanceUID = UID(series_uid or generate_uid())
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ["P", "F"] if view_position != "AP" else ["A", "F"]
    if modality == "CR":
        if view_position is not None:
            ds.ViewPosition = view_position
    else:
        ds.PresentationIntentType = (
            "FOR PROCESSING" if sop_class == DX_PROCESSING else "FOR PRESENTATION"
        )
        ds.ViewPosition = view_position or ""
        ds.ImageLaterality = "U"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.LossyImageCompression = "00"
        ds.ImagerPixelSpacing = ["0.2", "0.2"]
        ds.PixelSpacing = ["0.2", "0.2"]
        ds.BurnedInAnnotation = "NO"
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = Sequence()
        if sop_class != DX_PROCESSING:
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            ds.WindowCenter = str((lo + hi) // 2)
            ds.WindowWidth = str(hi - lo)
        ds.PresentationLUTShape = "INVERSE" if photometric == "MONOCHROME1" else "IDENTITY"
        anatomy = Dataset()
        anatomy.CodeValue = "51185008"
        anatomy.CodingSchemeDesignator = "SCT"
        anatomy.CodeMeaning = "Chest"
        ds.AnatomicRegionSequence = Sequence([anatomy])
        if view_position in _VIEW_CODES:
            code, meaning = _VIEW_CODES[view_position]
            view = Dataset()
            view.CodeValue = code
            view.CodingSchemeDesignator = "SCT"
            view.CodeMeaning = meaning
            view.ViewModifierCodeSequence = Sequence()
            ds.ViewCodeSequence = Sequence([view])
        else:
            ds.ViewCodeSequence = Sequence()
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = allocated
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.PixelData = np.ascontiguousarray(pixels).astype(
        pixels.dtype.newbyteorder("<"), copy=False
    ).tobytes()
    ds["PixelData"].VR = "OW" if allocated == 16 else "OB"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "DIFF3M_TEST"
    ds.file_meta = meta
    return ds


def write_file(path: str | Path, ds: Dataset | None = None, **kwargs: object) -> Path:
    """Write ``ds`` (or ``make_dataset(**kwargs)``) as a Part-10 file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = ds if ds is not None else make_dataset(**kwargs)  # type: ignore[arg-type]
    ds.save_as(path, enforce_file_format=True)
    return path


def to_bytes(ds: Dataset) -> bytes:
    """The Part-10 encoding of ``ds``."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
