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


LAYOUTS = ("mimic", "chexpert")
_SPLIT_ALIASES = {
    "train": "train",
    "val": "validate",
    "valid": "validate",
    "validate": "validate",
    "validation": "validate",
    "test": "test",
}


def normalise_split(split: str | None) -> str | None:
    """Canonical split name ("train" | "validate" | "test") or None; ValueError for anything else."""
    if split is None:
        return None
    try:
        return _SPLIT_ALIASES[split.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown split {split!r}: use train, validate or test") from None


def load_dataset(root: Path | str, layout: str, split: str | None = None) -> list[CxrSample]:
    """Frontal images with EHR and labels from a published layout ("mimic" or "chexpert")."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    wanted = normalise_split(split)
    if layout == "mimic":
        from diff3m.models.data.mimic import load_mimic

        return load_mimic(root, wanted)
    if layout == "chexpert":
        from diff3m.models.data.chexpert import load_chexpert

        return load_chexpert(root, wanted)
    raise ValueError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
