"""Write phantom cases in the MIMIC-CXR-JPG 2.x + MIMIC-IV 3.x layout (the files the mimic loader reads)."""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from diff3m.models.data.phantoms.cases import PhantomCase

CHEXPERT_COLUMNS = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)
METADATA_COLUMNS = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
LB_PER_KG = 1.0 / 0.45359237
CM_PER_INCH = 2.54
MISSING_RATE = 0.08  # per OMR measurement: nothing recorded within +-90 days of the study


@dataclass
class StudyRows:
    """The CSV rows one case contributes to the layout."""

    metadata: dict[str, str]
    chexpert: dict[str, str]
    split: dict[str, str]
    patient: dict[str, str]
    omr: list[dict[str, str]] = field(default_factory=list)


def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> Path:
    """files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg, as in MIMIC-CXR-JPG."""
    s = str(subject_id)
    return Path("files") / f"p{s[:2]}" / f"p{s}" / f"s{study_id}" / f"{dicom_id}.jpg"


def _omr_values(case: PhantomCase) -> dict[str, tuple[float, ...]]:
    e = case.ehr
    return {
        "BMI (kg/m2)": (e.bmi,),
        "Blood Pressure": (e.systolic, e.diastolic),
        "Height (Inches)": (e.height_cm / CM_PER_INCH,),
        "Weight (Lbs)": (e.weight_kg * LB_PER_KG,),
    }


def _fmt(name: str, values: tuple[float, ...]) -> str:
    if name == "Blood Pressure":
        return f"{int(round(values[0]))}/{int(round(values[1]))}"
    return f"{values[0]:.1f}"


def _year_group(rng: np.random.Generator) -> str:
    start = 2008 + 3 * int(rng.integers(0, 4))
    return f"{start} - {start + 2}"


def study_rows(case: PhantomCase, seed: int, size: int) -> StudyRows:
    """All CSV rows of one case; OMR rows include ties, stale values and gaps like real charts."""
    rng = np.random.default_rng([seed, case.index, 5])
    years_after_anchor = int(rng.integers(0, 3))
    anchor_year = 2110 + int(rng.integers(0, 70))
    study_date = dt.date(anchor_year + years_after_anchor, int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    anchor_age = int(round(case.ehr.age)) - years_after_anchor
    view = case.ehr.view
    metadata = {
        "dicom_id": case.dicom_id,
        "subject_id": str(case.subject_id),
        "study_id": str(case.study_id),
        "PerformedProcedureStepDescription": "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)",
        "ViewPosition": view,
        "Rows": str(size),
        "Columns": str(size),
        "StudyDate": study_date.strftime("%Y%m%d"),
        "StudyTime": "{:02d}{:02d}{:02d}.000".format(*(int(v) for v in rng.integers(0, [24, 60, 60]))),
        "ProcedureCodeSequence_CodeMeaning": metadata_procedure(view),
        "ViewCodeSequence_CodeMeaning": "antero-posterior" if view == "AP" else "postero-anterior",
        "PatientOrientationCodeSequence_CodeMeaning": "Recumbent" if view == "AP" else "Erect",
    }
    labels = {c: "" for c in CHEXPERT_COLUMNS}
    if case.normal:
        labels["No Finding"] = "1.0"
    for label in case.labels:
        labels[label] = "1.0"
    chexpert = {"subject_id": str(case.subject_id), "study_id": str(case.study_id), **labels}
    split = {
        "dicom_id": case.dicom_id,
        "study_id": str(case.study_id),
        "subject_id": str(case.subject_id),
        "split": case.split,
    }
    patient = {
        "subject_id": str(case.subject_id),
        "gender": case.ehr.sex,
        "anchor_age": str(anchor_age),
        "anchor_year": str(anchor_year),
        "anchor_year_group": _year_group(rng),
        "dod": "",
    }
    omr: list[dict[str, str]] = []

    def add(day: int, seq: int, name: str, values: tuple[float, ...]) -> None:
        omr.append(
            {
                "subject_id": str(case.subject_id),
                "chartdate": (study_date + dt.timedelta(days=day)).isoformat(),
                "seq_num": str(seq),
                "result_name": name,
                "result_value": _fmt(name, values),
            }
        )

    for name, values in _omr_values(case).items():
        if rng.random() < MISSING_RATE:
            if rng.random() < 0.5:  # only a stale value, outside the window
                add(int(rng.choice([-1, 1]) * rng.integers(120, 400)), 1, name, values)
            continue
        day = int(rng.integers(-60, 61))
        if rng.random() < 0.2:  # a tie: two values as close as each other, averaging to the truth
            delta = tuple(0.03 * v for v in values)
            add(day, 1, name, tuple(v + d for v, d in zip(values, delta, strict=True)))
            add(-day if day else day, 2, name, tuple(v - d for v, d in zip(values, delta, strict=True)))
        else:
            add(day, 1, name, values)
        if rng.random() < 0.3:  # a further-away value that must not be used
            far = abs(day) + int(rng.integers(5, 40))
            add(far if rng.random() < 0.5 else -far, 1, name, tuple(v * 1.1 for v in values))
    return StudyRows(metadata, chexpert, split, patient, omr)


def metadata_procedure(view: str) -> str:
    """ProcedureCodeSequence meaning MIMIC uses for the view."""
    return "CHEST (PORTABLE AP)" if view == "AP" else "CHEST (PA AND LAT)"


def write_image(root: Path, case: PhantomCase, image: np.ndarray) -> Path:
    """Save a [0, 1] image as 8-bit greyscale JPEG at its MIMIC path; returns the path."""
    path = root / image_relpath(case.subject_id, case.study_id, case.dicom_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8), mode="L").save(
        path, format="JPEG", quality=95
    )
    return path


def _write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(root: Path, rows: list[StudyRows]) -> None:
    """Write the three mimic-cxr CSVs and hosp/patients.csv + hosp/omr.csv."""
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", METADATA_COLUMNS, [r.metadata for r in rows])
    _write_csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        ("subject_id", "study_id", *CHEXPERT_COLUMNS),
        [r.chexpert for r in rows],
    )
    _write_csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ("dicom_id", "study_id", "subject_id", "split"),
        [r.split for r in rows],
    )
    _write_csv(
        root / "hosp" / "patients.csv",
        ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"),
        [r.patient for r in rows],
    )
    omr = sorted(
        (o for r in rows for o in r.omr),
        key=lambda o: (int(o["subject_id"]), o["chartdate"], o["result_name"], int(o["seq_num"])),
    )
    _write_csv(
        root / "hosp" / "omr.csv", ("subject_id", "chartdate", "seq_num", "result_name", "result_value"), omr
    )
