"""Read MIMIC-CXR-JPG 2.x + MIMIC-IV 3.x (patients, omr) into CxrSamples with EHR in canonical units."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import math
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from diff3m.models.data import CxrSample
from diff3m.models.data.report import LoadReport
from diff3m.models.fields import DEFAULT_REGISTRY, FieldRegistry
from diff3m.records import FieldValue

CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
WINDOW_DAYS = 90
FRONTAL = ("AP", "PA")
SPLITS = ("train", "validate", "test")
BP_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")

# omr result_name -> [(registry field, factor to the canonical unit, plausible canonical range)]
OMR_FIELDS: dict[str, list[tuple[str, float, tuple[float, float]]]] = {
    "BMI (kg/m2)": [("bmi", 1.0, (5.0, 150.0))],
    "Height (Inches)": [("height", 2.54, (30.0, 260.0))],
    "Weight (Lbs)": [("weight", 0.45359237, (1.0, 700.0))],
    "Blood Pressure": [("systolic", 1.0, (30.0, 320.0)), ("diastolic", 1.0, (10.0, 250.0))],
}


@dataclass(frozen=True)
class Patient:
    """One hosp/patients.csv row."""

    sex: str | None
    anchor_age: int
    anchor_year: int


def open_table(path: Path) -> IO[str]:
    """Open a CSV or its .csv.gz sibling (MIMIC-IV ships gzipped)."""
    if path.exists():
        return path.open(newline="")
    gz = path.with_name(path.name + ".gz")
    if gz.exists():
        return gzip.open(gz, "rt", newline="")
    raise FileNotFoundError(f"{path} (or {gz.name}) not found")


def rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV (or .csv.gz) as dicts."""
    with open_table(path) as fh:
        yield from csv.DictReader(fh)


def find_hosp(root: Path) -> Path | None:
    """The MIMIC-IV hosp/ folder: root/hosp, or one or two levels below root (e.g. mimiciv/3.1/hosp)."""
    for cand in [root / "hosp", *sorted(root.glob("*/hosp")), *sorted(root.glob("*/*/hosp"))]:
        if (cand / "patients.csv").exists() or (cand / "patients.csv.gz").exists():
            return cand
    return None


def parse_date(text: str) -> dt.date:
    """YYYYMMDD (MIMIC-CXR StudyDate) or YYYY-MM-DD[ time] (MIMIC-IV chartdate)."""
    t = text.strip()
    if len(t) == 8 and t.isdigit():
        return dt.date(int(t[:4]), int(t[4:6]), int(t[6:]))
    return dt.date.fromisoformat(t[:10])


def parse_bp(text: str) -> tuple[float, float]:
    """A blood pressure "142/88" -> (142.0, 88.0); ValueError otherwise."""
    m = BP_RE.match(text)
    if not m:
        raise ValueError(f"not a blood pressure: {text!r}")
    return float(m.group(1)), float(m.group(2))


def parse_omr_value(name: str, text: str) -> list[tuple[str, float]]:
    """One omr result as [(registry field, value in canonical unit)]; ValueError when malformed."""
    specs = OMR_FIELDS[name]
    raw = list(parse_bp(text)) if name == "Blood Pressure" else [float(text)]
    out = []
    for (field_name, factor, (lo, hi)), v in zip(specs, raw, strict=True):
        value = v * factor
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{name} {text!r} out of range")
        out.append((field_name, value))
    return out


def closest_value(measures: list[tuple[dt.date, float]], when: dt.date, window_days: int) -> float | None:
    """The value charted closest to ``when`` within +-window_days; values tied for closest are averaged."""
    best: int | None = None
    picked: list[float] = []
    for day, value in measures:
        gap = abs((day - when).days)
        if gap > window_days:
            continue
        if best is None or gap < best:
            best, picked = gap, [value]
        elif gap == best:
            picked.append(value)
    return sum(picked) / len(picked) if picked else None


def _load_patients(hosp: Path, subjects: set[str], report: LoadReport) -> dict[str, Patient]:
    patients: dict[str, Patient] = {}
    for row in rows(hosp / "patients.csv"):
        sid = (row.get("subject_id") or "").strip()
        if sid not in subjects:
            continue
        try:
            gender = (row.get("gender") or "").strip().upper()
            patients[sid] = Patient(
                gender if gender in ("F", "M") else None,
                int(float(row["anchor_age"])),
                int(float(row["anchor_year"])),
            )
        except (KeyError, TypeError, ValueError):
            report.bad("patients.csv rows with a bad anchor_age/anchor_year")
    return patients


def _load_omr(
    hosp: Path, subjects: set[str], names: set[str], report: LoadReport
) -> dict[str, dict[str, list[tuple[dt.date, float]]]]:
    """subject -> field -> [(chartdate, value)] for the wanted omr result names."""
    out: dict[str, dict[str, list[tuple[dt.date, float]]]] = defaultdict(lambda: defaultdict(list))
    try:
        fh = open_table(hosp / "omr.csv")
    except FileNotFoundError:
        report.bad("missing hosp/omr.csv (no BMI, blood pressure, height, weight)")
        return out
    with fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        try:
            i_sub, i_date, i_name, i_val = (
                header.index(c) for c in ("subject_id", "chartdate", "result_name", "result_value")
            )
        except ValueError:
            report.bad("omr.csv without subject_id/chartdate/result_name/result_value columns")
            return out
        width = max(i_sub, i_date, i_name, i_val) + 1
        for rec in reader:
            if len(rec) < width:
                report.bad("omr.csv rows too short")
                continue
            name = rec[i_name].strip()
            if name not in names or rec[i_sub].strip() not in subjects:
                continue
            try:
                day = parse_date(rec[i_date])
                for field_name, value in parse_omr_value(name, rec[i_val]):
                    out[rec[i_sub].strip()][field_name].append((day, value))
            except ValueError:
                report.bad("omr.csv values or dates that do not parse")
    return out


def _labels(root: Path, report: LoadReport) -> dict[tuple[str, str], tuple[bool, tuple[str, ...]]]:
    """(subject, study) -> (normal, positive findings) from the chexpert label file."""
    labels: dict[tuple[str, str], tuple[bool, tuple[str, ...]]] = {}
    for row in rows(root / CHEXPERT_CSV):
        key = ((row.get("subject_id") or "").strip(), (row.get("study_id") or "").strip())
        try:
            values = {
                k: (float(v) if v and v.strip() else None)
                for k, v in row.items()
                if k not in ("subject_id", "study_id") and k is not None
            }
        except ValueError:
            report.bad("label rows with a value other than 1, 0, -1 or blank")
            continue
        if any(v not in (None, 1.0, 0.0, -1.0) for v in values.values()):
            report.bad("label rows with a value other than 1, 0, -1 or blank")
            continue
        findings = tuple(sorted(k for k, v in values.items() if v == 1.0 and k != "No Finding"))
        labels[key] = (values.get("No Finding") == 1.0, findings)
    return labels


def load_mimic(
    root: Path,
    split: str | None = None,
    registry: FieldRegistry = DEFAULT_REGISTRY,
    window_days: int = WINDOW_DAYS,
) -> list[CxrSample]:
    """Frontal (AP/PA) images of MIMIC-CXR-JPG with MIMIC-IV EHR; ``split`` filters the official split."""
    root = Path(root)
    report = LoadReport("mimic")
    splits = {
        (r.get("dicom_id") or "").strip(): (r.get("split") or "").strip() for r in rows(root / SPLIT_CSV)
    }
    labels = _labels(root, report)
    meta = []
    for row in rows(root / METADATA_CSV):
        view = (row.get("ViewPosition") or "").strip().upper()
        if view not in FRONTAL:
            report.skip("non-frontal images (lateral or unknown view)")
            continue
        dicom_id, subject, study = (row.get(k, "").strip() for k in ("dicom_id", "subject_id", "study_id"))
        if not (dicom_id and subject.isdigit() and study.isdigit()):
            report.bad("metadata rows without a numeric subject_id/study_id or dicom_id")
            continue
        sp = splits.get(dicom_id)
        if sp not in SPLITS:
            report.bad("images missing from the split file")
            continue
        if split is not None and sp != split:
            report.skip(f"images outside split {split!r}")
            continue
        if (subject, study) not in labels:
            report.bad("studies without a label row")
            continue
        try:
            study_date: dt.date | None = parse_date(row.get("StudyDate") or "")
        except ValueError:
            report.bad("metadata rows with a bad StudyDate (no age or EHR for them)")
            study_date = None
        meta.append((dicom_id, subject, study, view, sp, study_date))

    subjects = {m[1] for m in meta}
    hosp = find_hosp(root)
    patients: dict[str, Patient] = {}
    omr: dict[str, dict[str, list[tuple[dt.date, float]]]] = {}
    wanted = {name for name, specs in OMR_FIELDS.items() if all(s[0] in registry.names for s in specs)}
    if hosp is None:
        if meta:
            report.bad("no MIMIC-IV hosp/patients.csv beside the images (studies kept without EHR)")
    else:
        patients = _load_patients(hosp, subjects, report)
        omr = _load_omr(hosp, subjects, wanted, report)

    samples = []
    for dicom_id, subject, study, view, sp, study_date in meta:
        path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom_id}.jpg"
        if not path.exists():
            report.bad("images listed in the metadata but missing on disk")
            continue
        values: dict[str, FieldValue] = {name: None for name in registry.names}
        if "view" in values:
            values["view"] = view
        patient = patients.get(subject)
        if patient is not None:
            if "sex" in values:
                values["sex"] = patient.sex
            if study_date is not None and "age" in values:
                values["age"] = float(patient.anchor_age + (study_date.year - patient.anchor_year))
        if study_date is not None:
            for field_name, measures in omr.get(subject, {}).items():
                if field_name in values:
                    values[field_name] = closest_value(measures, study_date, window_days)
        normal, findings = labels[(subject, study)]
        samples.append(
            CxrSample(
                path=path,
                values=values,
                normal=normal,
                split=sp,
                study_id=study,
                subject_id=subject,
                findings=findings,
            )
        )
    report.loaded = len(samples)
    report.emit()
    return samples
