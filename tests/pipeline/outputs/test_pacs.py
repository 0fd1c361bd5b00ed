"""SR and SC stored into a real Orthanc: accepted, in the source study, and a re-run adds nothing."""

from __future__ import annotations

import io
import json
import urllib.request

from pydicom.dataset import Dataset

from diff3m.pipeline.outputs import build_heatmap_sc, build_sr
from tests.pipeline.outputs.factory import SourceSpec, make_ehr, make_result, make_source
from tests.services import Orthanc


def _post(orthanc: Orthanc, ds: Dataset) -> dict[str, str]:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    req = urllib.request.Request(orthanc.url + "/instances", data=buf.getvalue(), method="POST",
                                 headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return dict(json.loads(r.read()))


def test_orthanc_accepts_sr_and_sc_into_the_source_study(orthanc: Orthanc) -> None:
    spec = SourceSpec(modality="DX", charset="ISO_IR 100", patient_name="Müller^Jürgen",
                      rows=200, columns=160)
    src = make_source(spec)
    res = make_result(spec.rows, spec.columns)
    _post(orthanc, src)
    first = [_post(orthanc, build_sr([src], res, make_ehr(False), 1)),
             _post(orthanc, build_heatmap_sc(src, res, 1))]
    assert [r["Status"] for r in first] == ["Success", "Success"]

    studies = orthanc.get("/studies")
    assert isinstance(studies, list) and len(studies) == 1
    study = orthanc.get(f"/studies/{studies[0]}")
    assert isinstance(study, dict)
    assert study["MainDicomTags"]["StudyInstanceUID"] == src.StudyInstanceUID
    assert len(study["Series"]) == 3  # the source series, the SR series, the SC series
    modalities = sorted(orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"]  # type: ignore[index]
                        for s in study["Series"])
    assert modalities == ["DX", "OT", "SR"]
    patient = orthanc.get(f"/studies/{studies[0]}/patient")
    assert patient["MainDicomTags"]["PatientName"] == "Müller^Jürgen"  # type: ignore[index]

    # a re-run of the same revision rebuilds the same UIDs: Orthanc already has them
    again = [_post(orthanc, build_sr([src], res, make_ehr(False), 1)),
             _post(orthanc, build_heatmap_sc(src, res, 1))]
    assert [r["Status"] for r in again] == ["AlreadyStored", "AlreadyStored"]
    assert len(orthanc.instances()) == 3
