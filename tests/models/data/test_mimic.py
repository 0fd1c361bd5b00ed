"""MIMIC-CXR-JPG + MIMIC-IV loader on a tiny fixture copy of the published layout."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diff3m.models.data import load_dataset
from diff3m.models.data.mimic import closest_value, parse_bp, parse_omr_value

LABEL_COLS = [
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
]


def _csv(path: Path, header: list[str], rows: list[list[object]], gz: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = (
        gzip.open(path.with_name(path.name + ".gz"), "wt", newline="") if gz else path.open("w", newline="")
    )
    with opener as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def _jpg(root: Path, subject: int, study: int, dicom: str) -> None:
    p = root / "files" / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(subject).random((16, 16)) * 255).astype(np.uint8)).save(p)


def _labels(**pos: float) -> list[object]:
    return [pos.get(c.replace(" ", "_"), "") for c in LABEL_COLS]


@pytest.fixture
def mimic_root(tmp_path: Path) -> Path:
    root = tmp_path / "mimic"
    meta_h = [
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
    ]
    meta = [
        ["a1", 10000001, 50000001, "CHEST (PA AND LAT)", "PA", 16, 16, "21500610", "101010.000", "", "", ""],
        [
            "a2",
            10000001,
            50000001,
            "CHEST (PA AND LAT)",
            "LATERAL",
            16,
            16,
            "21500610",
            "101010.000",
            "",
            "",
            "",
        ],
        ["b1", 10000002, 50000002, "CHEST (PORTABLE AP)", "AP", 16, 16, "21610102", "020202.000", "", "", ""],
        ["c1", 10000003, 50000003, "CHEST (PA AND LAT)", "PA", 16, 16, "21700315", "030303.000", "", "", ""],
        ["d1", "xx", 50000004, "CHEST (PA AND LAT)", "PA", 16, 16, "21700315", "030303.000", "", "", ""],
        ["e1", 10000005, 50000005, "CHEST (PA AND LAT)", "PA", 16, 16, "21700315", "030303.000", "", "", ""],
    ]
    _csv(root / "mimic-cxr-2.0.0-metadata.csv", meta_h, meta)
    _csv(
        root / "mimic-cxr-2.0.0-chexpert.csv",
        ["subject_id", "study_id", *LABEL_COLS],
        [
            [10000001, 50000001, *_labels(No_Finding=1.0)],
            [10000002, 50000002, *_labels(Cardiomegaly=1.0, Edema=-1.0, Pleural_Effusion=0.0)],
            [10000003, 50000003, *_labels(Lung_Lesion=1.0)],
            [10000005, 50000005, *_labels(No_Finding=1.0)],
        ],
    )
    _csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [
            ["a1", 50000001, 10000001, "train"],
            ["a2", 50000001, 10000001, "train"],
            ["b1", 50000002, 10000002, "test"],
            ["c1", 50000003, 10000003, "validate"],
            ["d1", 50000004, 0, "train"],
            ["e1", 50000005, 10000005, "train"],
        ],
    )
    for subject, study, dicom in [
        (10000001, 50000001, "a1"),
        (10000001, 50000001, "a2"),
        (10000002, 50000002, "b1"),
        (10000003, 50000003, "c1"),
    ]:
        _jpg(root, subject, study, dicom)  # e1 is listed but missing on disk
    _csv(
        root / "hosp" / "patients.csv",
        ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
        [
            [10000001, "F", 60, 2148, "2008 - 2010", ""],
            [10000002, "M", 91, 2160, "2017 - 2019", ""],
            [10000005, "M", 40, 2170, "2017 - 2019", ""],
        ],
        gz=True,
    )  # MIMIC-IV ships .csv.gz
    study1 = dt.date(2150, 6, 10)

    def d(days: int, base: dt.date = study1) -> str:
        return (base + dt.timedelta(days=days)).isoformat()

    _csv(
        root / "hosp" / "omr.csv",
        ["subject_id", "chartdate", "seq_num", "result_name", "result_value"],
        [
            [10000001, d(-40), 1, "BMI (kg/m2)", "30.0"],
            [10000001, d(40), 1, "BMI (kg/m2)", "32.0"],  # tie with -40 -> mean 31.0
            [10000001, d(-100), 1, "BMI (kg/m2)", "20.0"],  # outside the window
            [10000001, d(-200), 1, "Height (Inches)", "65"],  # only value is outside the window -> None
            [10000001, d(10), 1, "Weight (Lbs)", "150"],  # -> 68.04 kg
            [10000001, d(11), 1, "Weight (Lbs)", "200"],  # farther: ignored
            [10000001, d(0), 1, "Blood Pressure", "142/88"],
            [10000001, d(5), 1, "Blood Pressure", "120/80"],
            [10000001, d(0), 1, "eGFR", "90"],  # not a registry field
            [10000003, d(0, dt.date(2170, 3, 15)), 1, "Blood Pressure", "abc"],  # malformed
            [10000003, d(1, dt.date(2170, 3, 15)), 1, "Height (Inches)", "70"],  # -> 177.8 cm
        ],
    )
    return root


def test_mimic_values_units_window_and_ties(mimic_root: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="diff3m.models.data"):
        samples = load_dataset(mimic_root, "mimic")
    by_id = {s.path.stem: s for s in samples}
    assert sorted(by_id) == ["a1", "b1", "c1"]  # lateral a2 skipped; d1 malformed; e1 missing image
    a = by_id["a1"].values
    assert a["sex"] == "F" and a["view"] == "PA"
    assert a["age"] == 62.0  # anchor_age 60 in 2148, study in 2150
    assert a["bmi"] == pytest.approx(31.0)
    assert a["height"] is None
    assert a["weight"] == pytest.approx(150 * 0.45359237)
    assert (a["systolic"], a["diastolic"]) == (142.0, 88.0)
    assert by_id["a1"].normal and by_id["a1"].split == "train" and by_id["a1"].findings == ()
    b = by_id["b1"]
    assert not b.normal and b.findings == ("Cardiomegaly",) and b.split == "test"
    assert b.values["sex"] == "M" and b.values["view"] == "AP" and b.values["age"] == 92.0
    assert all(b.values[k] is None for k in ("bmi", "systolic", "diastolic", "height", "weight"))  # kept
    c = by_id["c1"]
    assert c.values["sex"] is None and c.values["age"] is None  # no patients row: kept without EHR
    assert c.values["height"] == pytest.approx(70 * 2.54) and c.values["systolic"] is None
    assert c.findings == ("Lung Lesion",) and c.split == "validate"

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    msg = warnings[0].getMessage()
    assert "3 malformed" in msg and "missing on disk" in msg and "do not parse" in msg, msg


def test_mimic_split_filter(mimic_root: Path) -> None:
    assert [s.path.stem for s in load_dataset(mimic_root, "mimic", split="test")] == ["b1"]
    assert [s.path.stem for s in load_dataset(mimic_root, "mimic", split="val")] == ["c1"]
    with pytest.raises(ValueError, match="unknown split"):
        load_dataset(mimic_root, "mimic", split="holdout")
    with pytest.raises(ValueError, match="unknown layout"):
        load_dataset(mimic_root, "nih")


def test_parsers() -> None:
    assert parse_bp("142/88") == (142.0, 88.0)
    assert parse_bp(" 120 / 80 ") == (120.0, 80.0)
    for bad in ("142", "abc", "142/", "/88", "142/88/1"):
        with pytest.raises(ValueError):
            parse_bp(bad)
    assert parse_omr_value("Height (Inches)", "70") == [("height", pytest.approx(177.8))]
    assert parse_omr_value("Weight (Lbs)", "220.5") == [("weight", pytest.approx(100.0166, abs=1e-3))]
    with pytest.raises(ValueError):
        parse_omr_value("BMI (kg/m2)", "9999")  # implausible
    day = dt.date(2150, 1, 1)
    m = [(day - dt.timedelta(days=3), 1.0), (day + dt.timedelta(days=3), 3.0), (day, 10.0), (day, 20.0)]
    assert closest_value(m, day, 90) == 15.0  # same-day values averaged
    assert closest_value(m[:2], day, 90) == 2.0
    assert closest_value([(day + dt.timedelta(days=91), 5.0)], day, 90) is None
    assert closest_value([(day - dt.timedelta(days=90), 5.0)], day, 90) == 5.0
