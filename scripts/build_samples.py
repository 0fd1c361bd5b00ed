"""Build the bundled sample studies (diff3m/samples/*.dcm): phantom chest radiographs as DX For Presentation.

Usage: python scripts/build_samples.py [OUT_DIR]   (default diff3m/samples)

Three patients match the dev FHIR seed (deploy/fhir-dev-server/seed-bundle.json): DIFF3M-0001 (normal, PA),
DIFF3M-0002 (lung nodule, PA), DIFF3M-0003 (cardiomegaly + effusion, AP portable). UIDs are derived from a
fixed root so a rebuild gives the same objects. Names and dates are synthetic.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from diff3m.models.data.phantoms.anatomy import load_anatomy
from diff3m.models.data.phantoms.cases import PatientEhr, make_case, sample_finding
from diff3m.models.data.phantoms.render import FOV_MM, render

DX_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
SIZE = 256
BITS = 12
STUDY_DATE = dt.date(2024, 3, 15)


@dataclass(frozen=True)
class SampleSpec:
    """One bundled study: the patient (as in the FHIR seed) and what the image shows."""

    patient_id: str
    accession: str
    name: str
    birth_date: dt.date
    ehr: PatientEhr
    findings: tuple[str, ...]
    case_index: int


SPECS = (
    SampleSpec(
        "DIFF3M-0001",
        "ACC0001",
        "Phantom^Alice",
        dt.date(1960, 5, 20),
        PatientEhr("F", 63.0, 165.0, 74.6, 27.4, 132.0, 84.0, "PA"),
        (),
        1,
    ),
    SampleSpec(
        "DIFF3M-0002",
        "ACC0002",
        "Phantom^Bob",
        dt.date(1948, 11, 2),
        PatientEhr("M", 75.0, 177.8, 81.6, 25.8, 150.0, 86.0, "PA"),
        ("nodule",),
        2,
    ),
    SampleSpec(
        "DIFF3M-0003",
        "ACC0003",
        "Phantom^Carol",
        dt.date(1975, 1, 31),
        PatientEhr("F", 49.0, 162.0, 65.0, 24.8, 118.0, 76.0, "AP"),
        ("cardiomegaly", "effusion"),
        3,
    ),
)


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _uid(*parts: str) -> UID:
    return generate_uid(entropy_srcs=["diff3m-samples", *parts])


def build_image(spec: SampleSpec) -> tuple[np.ndarray, float]:
    """Render the phantom for ``spec``: (uint16 pixels, detector pixel spacing mm)."""
    anatomy = load_anatomy()
    case = make_case(2024, spec.case_index, bool(spec.findings), "test", anatomy)
    case = dataclasses.replace(case, ehr=spec.ehr)
    acq = dataclasses.replace(
        case.acquisition,
        sid_mm=1000.0 if spec.ehr.view == "AP" else 1800.0,
        rotation_deg=0.5,
        tilt_deg=0.0,
        shift_mm=(0.0, 0.0),
        photons=4e4,
    )
    rng = np.random.default_rng([2024, spec.case_index])
    findings = tuple(sample_finding(rng, anatomy, k) for k in spec.findings if k != "cardiomegaly")  # type: ignore
    heart = case.expected_heart_scale + (0.22 if "cardiomegaly" in spec.findings else 0.0)
    case = dataclasses.replace(case, acquisition=acq, findings=findings, heart_scale=heart)
    image = render(case, SIZE, 2024).image
    return np.round(image * (2**BITS - 1)).astype(np.uint16), FOV_MM / SIZE


def build_dataset(spec: SampleSpec) -> Dataset:
    """A DX For Presentation image of the sample patient."""
    pixels, spacing = build_image(spec)
    study_uid = _uid(spec.patient_id, "study")
    sop_uid = _uid(spec.patient_id, "image")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DX_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = STUDY_DATE.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = STUDY_DATE.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = "093000"
    ds.AccessionNumber = spec.accession
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Diff3M phantom generator"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST (PORTABLE AP)" if spec.ehr.view == "AP" else "CHEST PA"
    ds.SeriesDescription = f"Chest {spec.ehr.view} (synthetic phantom)"
    ds.PatientName = spec.name
    ds.PatientID = spec.patient_id
    ds.PatientBirthDate = spec.birth_date.strftime("%Y%m%d")
    ds.PatientSex = spec.ehr.sex
    ds.PatientAge = f"{int(spec.ehr.age):03d}Y"
    ds.PatientSize = f"{spec.ehr.height_cm / 100:.2f}"
    ds.PatientWeight = f"{spec.ehr.weight_kg:.1f}"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.ehr.view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _uid(spec.patient_id, "series")
    ds.StudyID = spec.accession
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = Sequence([_code(codes.SCT.Chest)])
    ds.ViewCodeSequence = Sequence(
        [_code(codes.SCT.AnteroPosterior if spec.ehr.view == "AP" else codes.SCT.PosteroAnterior)]
    )
    ds.ViewCodeSequence[0].ViewModifierCodeSequence = Sequence([])
    ds.PositionerType = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.AcquisitionContextSequence = Sequence([])
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.WindowCenter = 2**BITS // 2
    ds.WindowWidth = 2**BITS
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = BITS
    ds.HighBit = BITS - 1
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("diff3m/samples"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        path = args.out / f"{spec.patient_id}.dcm"
        ds = build_dataset(spec)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
