"""Synthetic chest X-ray studies for benchmarks: one DX For Presentation image per study, unique UIDs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def chest_pixels(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A 16-bit chest-like image: bright body, two darker lungs, noise."""
    yy = np.linspace(0.0, 1.0, rows, dtype=np.float32)[:, None]
    xx = np.linspace(0.0, 1.0, cols, dtype=np.float32)[None, :]
    img = 0.8 - 0.4 * np.exp(-((xx - 0.3) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
    img = img - 0.4 * np.exp(-((xx - 0.7) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
    img = img + 0.02 * rng.standard_normal((rows, cols), dtype=np.float32)
    return (np.clip(img, 0, 1) * 65535).astype(np.uint16)


def dx_study(index: int, rows: int, cols: int, seed: int = 0) -> Dataset:
    """One PA chest DX image in its own new study (synthetic patient BENCH-<index>)."""
    rng = np.random.default_rng([seed, index])
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDate = ds.ContentDate = "20260101"
    ds.StudyTime = ds.ContentTime = "120000"
    ds.AccessionNumber = f"BENCH{index:05d}"
    ds.Modality = "DX"
    ds.Manufacturer = "Diff3M bench"
    ds.ReferringPhysicianName = ""
    ds.PatientName = f"BENCH^{index:05d}"
    ds.PatientID = f"BENCH-{index:05d}"
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F" if index % 2 else "M"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyID = "1"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.PatientOrientation = ["P", "F"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ViewPosition = "PA"
    ds.ImageLaterality = "U"
    ds.DetectorType = "SCINTILLATOR"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.LossyImageCompression = "00"
    ds.ImagerPixelSpacing = ds.PixelSpacing = ["0.15", "0.15"]
    ds.BurnedInAnnotation = "NO"
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = Sequence()
    ds.WindowCenter, ds.WindowWidth = "32767", "65535"
    ds.PresentationLUTShape = "IDENTITY"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "51185008", "SCT", "Chest"
    ds.AnatomicRegionSequence = Sequence([region])
    view = Dataset()
    view.CodeValue, view.CodingSchemeDesignator, view.CodeMeaning = "399348003", "SCT", "postero-anterior"
    view.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = chest_pixels(rows, cols, rng).astype("<u2").tobytes()
    ds["PixelData"].VR = "OW"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def write_studies(folder: Path, n: int, rows: int, cols: int, seed: int = 0) -> list[tuple[str, Path]]:
    """``n`` one-image studies as Part-10 files; (StudyInstanceUID, path) each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ds = dx_study(i, rows, cols, seed)
        path = folder / f"study{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append((str(ds.StudyInstanceUID), path))
    return out
