"""The bundled sample studies: valid DX For Presentation objects that the model's preprocessing reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom

from diff3m.models.preprocess import load_image
from tests.services import assert_dciodvfy_clean

SAMPLES = Path(__file__).resolve().parents[3] / "diff3m" / "samples"


def test_bundled_samples_are_valid_dx_and_load() -> None:
    files = sorted(SAMPLES.glob("*.dcm"))
    assert [f.stem for f in files] == ["DIFF3M-0001", "DIFF3M-0002", "DIFF3M-0003"]
    assert sum(f.stat().st_size for f in files) < 600_000
    study_uids = set()
    for i, f in enumerate(files, start=1):
        assert_dciodvfy_clean(f)
        ds = pydicom.dcmread(f)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1"  # DX For Presentation
        assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.Modality == "DX"
        assert ds.PatientID == f"DIFF3M-000{i}" and ds.AccessionNumber == f"ACC000{i}"
        assert ds.ViewPosition in ("AP", "PA")
        study_uids.add(ds.StudyInstanceUID)
        img = load_image(f)
        assert img.pixels.shape == (ds.Rows, ds.Columns)
        assert 0.0 <= float(img.pixels.min()) and float(img.pixels.max()) <= 1.0
        assert float(np.std(img.pixels)) > 0.1  # a radiograph, not a blank frame
        assert img.pixel_spacing is not None
    assert len(study_uids) == 3
