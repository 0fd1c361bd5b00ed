"""CheXpert-v1.0 loader on a tiny fixture copy of the published layout."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diff3m.models.data import load_dataset
from diff3m.models.data.chexpert import LABELS

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *LABELS]


def _row(path: str, sex: str, age: str, fl: str, appa: str, **labels: str) -> list[str]:
    return [path, sex, age, fl, appa, *[labels.get(c.replace(" ", "_"), "") for c in LABELS]]


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    root = tmp_path / "CheXpert-v1.0"
    rows = {
        "train.csv": [
            _row(
                "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
                "Male",
                "45",
                "Frontal",
                "PA",
                No_Finding="1.0",
            ),
            _row("CheXpert-v1.0/train/patient00001/study1/view2_lateral.jpg", "Male", "45", "Lateral", ""),
            _row(
                "CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg",
                "Female",
                "70",
                "Frontal",
                "AP",
                Cardiomegaly="1.0",
                Edema="-1.0",
                Pleural_Effusion="0.0",
            ),
            _row(
                "CheXpert-v1.0/train/patient00003/study2/view1_frontal.jpg",
                "Unknown",
                "0",
                "Frontal",
                "LL",
                Lung_Opacity="-1.0",
            ),
            _row(
                "CheXpert-v1.0/train/patient00004/study1/view1_frontal.jpg",
                "Male",
                "50",
                "Frontal",
                "PA",
                Edema="2",
            ),  # malformed label
            _row(
                "CheXpert-v1.0/train/patient00005/study1/view1_frontal.jpg",
                "Male",
                "50",
                "Frontal",
                "PA",
                No_Finding="1.0",
            ),  # image missing
        ],
        "valid.csv": [
            _row(
                "CheXpert-v1.0/valid/patient64541/study1/view1_frontal.jpg",
                "Female",
                "33",
                "Frontal",
                "PA",
                No_Finding="1.0",
            ),
        ],
    }
    root.mkdir(parents=True)
    for name, body in rows.items():
        with (root / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(HEADER)
            w.writerows(body)
        for r in body:
            if "patient00005" in r[0]:
                continue
            p = root.parent / r[0]
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((np.random.default_rng(1).random((12, 10)) * 255).astype(np.uint8)).save(p)
    return root


def test_chexpert_fields_labels_and_splits(chexpert_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="diff3m.models.data"):
        samples = load_dataset(chexpert_root, "chexpert")
    by_id = {s.study_id: s for s in samples}
    assert sorted(by_id) == [
        "patient00001/study1",
        "patient00002/study1",
        "patient00003/study2",
        "patient64541/study1",
    ]
    a = by_id["patient00001/study1"]
    assert a.normal and a.split == "train" and a.path.name == "view1_frontal.jpg"
    assert (a.values["sex"], a.values["age"], a.values["view"]) == ("M", 45.0, "PA")
    assert a.values["bmi"] is None  # CheXpert has no OMR: kept with None
    b = by_id["patient00002/study1"]
    assert not b.normal and b.findings == ("Cardiomegaly",)  # -1 uncertain and 0 are not positive
    assert (b.values["sex"], b.values["age"], b.values["view"]) == ("F", 70.0, "AP")
    c = by_id["patient00003/study2"]
    assert not c.normal and c.findings == () and c.values["sex"] is None and c.values["age"] is None
    assert c.values["view"] is None  # LL is not AP/PA
    assert by_id["patient64541/study1"].split == "validate"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "2 malformed" in warnings[0], warnings
    assert [s.study_id for s in load_dataset(chexpert_root, "chexpert", split="validate")] == [
        "patient64541/study1"
    ]


def test_chexpert_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "nope", "chexpert")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_dataset(tmp_path / "empty", "chexpert")
