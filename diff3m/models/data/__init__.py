"""Training and evaluation data: the published dataset layouts and synthetic phantoms."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diff3m.records import FieldValue


@dataclass(frozen=True)
class CxrSample:
    """One frontal chest radiograph with its EHR values and labels, as read from a dataset."""

    path: Path  # the image file (JPG/PNG of MIMIC-CXR-JPG / CheXpert, or DICOM)
    values: dict[str, FieldValue]  # registry field name -> value in canonical unit, None if missing
    normal: bool  # MIMIC: No Finding == 1; CheXpert: No Finding == 1
    split: str  # "train" | "validate" | "test"
    study_id: str
    subject_id: str = ""
    findings: tuple[str, ...] = field(default=())  # positive labels (e.g. "Nodule", "Effusion")
