"""Read CheXpert-v1.0 (train.csv / valid.csv: Path, Sex, Age, Frontal/Lateral, AP/PA, 14 labels)."""

from __future__ import annotations

import csv
from pathlib import Path

from diff3m.models.data import CxrSample
from diff3m.models.data.report import LoadReport
from diff3m.models.fields import DEFAULT_REGISTRY, FieldRegistry
from diff3m.records import FieldValue

LABELS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
FILES = (("train.csv", "train"), ("valid.csv", "validate"), ("test.csv", "test"))
SEX = {"male": "M", "female": "F"}
LABEL_VALUES = {"1.0": 1.0, "1": 1.0, "0.0": 0.0, "0": 0.0, "-1.0": -1.0, "-1": -1.0, "": None}


def resolve_image(root: Path, rel: str) -> Path | None:
    """The image a CSV Path names: relative to the dataset's parent (as published) or to the root."""
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        return None
    candidates = [root.parent / p, root / p]
    if len(p.parts) > 1:
        candidates.append(root / Path(*p.parts[1:]))  # "CheXpert-v1.0/train/..." inside the root
    return next((c for c in candidates if c.is_file()), None)


def _row_sample(
    root: Path, row: dict[str, str], split: str, registry: FieldRegistry, report: LoadReport
) -> CxrSample | None:
    rel = (row.get("Path") or "").strip()
    if not rel:
        report.bad("rows without a Path")
        return None
    if (row.get("Frontal/Lateral") or "").strip().lower() != "frontal":
        report.skip("non-frontal images")
        return None
    labels: dict[str, float | None] = {}
    for name in LABELS:
        raw = (row.get(name) or "").strip()
        if raw not in LABEL_VALUES:
            report.bad("rows with a label other than 1, 0, -1 or blank")
            return None
        labels[name] = LABEL_VALUES[raw]
    path = resolve_image(root, rel)
    if path is None:
        report.bad("images listed but missing on disk (or an unsafe Path)")
        return None
    values: dict[str, FieldValue] = {name: None for name in registry.names}
    if "sex" in values:
        values["sex"] = SEX.get((row.get("Sex") or "").strip().lower())
    if "age" in values:
        raw_age = (row.get("Age") or "").strip()
        try:
            age = float(raw_age) if raw_age else None
        except ValueError:
            report.bad("rows with a non-numeric Age (kept without age)")
            age = None
        values["age"] = age if age is not None and 0 < age < 130 else None
    if "view" in values:
        view = (row.get("AP/PA") or "").strip().upper()
        values["view"] = view if view in ("AP", "PA") else None
    parts = Path(rel).parts
    patient = next((x for x in parts if x.startswith("patient")), "")
    study = next((x for x in parts if x.startswith("study")), "")
    findings = tuple(sorted(k for k, v in labels.items() if v == 1.0 and k != "No Finding"))
    return CxrSample(
        path=path,
        values=values,
        normal=labels["No Finding"] == 1.0,
        split=split,
        study_id=f"{patient}/{study}" if patient and study else rel,
        subject_id=patient,
        findings=findings,
    )


def load_chexpert(
    root: Path, split: str | None = None, registry: FieldRegistry = DEFAULT_REGISTRY
) -> list[CxrSample]:
    """Frontal images of a CheXpert-v1.0 folder; train.csv is "train", valid.csv "validate"."""
    root = Path(root)
    report = LoadReport("chexpert")
    present = [(root / name, sp) for name, sp in FILES if (root / name).exists()]
    if not present:
        raise FileNotFoundError(f"no train.csv / valid.csv in {root}")
    samples = []
    for csv_path, sp in present:
        if split is not None and sp != split:
            continue
        with csv_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                sample = _row_sample(root, row, sp, registry, report)
                if sample is not None:
                    samples.append(sample)
    report.loaded = len(samples)
    report.emit()
    return samples
