"""The TID 1500 SR: valid for dciodvfy, in the source study, with the result readable back."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from diff3m.pipeline.outputs import OutputRef, SourceError, build_sr
from diff3m.pipeline.outputs import codes as c
from tests.pipeline.outputs.factory import SourceSpec, make_ehr, make_result, make_source
from tests.services import assert_dciodvfy_clean

SPECS = {
    "cr-mono2-12bit-ascii": SourceSpec(),
    "dx-mono1-16bit-latin1": SourceSpec(modality="DX", photometric="MONOCHROME1", bits_stored=16,
                                        charset="ISO_IR 100", patient_name="Müller^Jürgen"),
    "cr-utf8-no-spacing": SourceSpec(charset="ISO_IR 192", patient_name="山田^太郎", pixel_spacing=None),
    "cr-iso2022-japanese": SourceSpec(charset="\\ISO 2022 IR 87", patient_name="Yamada^Tarou=山田^太郎"),
    "dx-invalid-values": SourceSpec(modality="DX", bad_values=True),
}


def _write(ds: hd.SOPClass, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _report(path: Path) -> hd.sr.MeasurementReport:
    sr = hd.sr.srread(path)
    return hd.sr.MeasurementReport.from_sequence(sr.content)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("available", [True, False], ids=["ehr", "no-ehr"])
@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_sr_is_valid_and_carries_the_result(tmp_path: Path, spec: SourceSpec, available: bool) -> None:
    src = make_source(spec)
    res = make_result(spec.rows, spec.columns)
    path = _write(build_sr([src], res, make_ehr(available), 1), tmp_path / "sr.dcm")
    assert_dciodvfy_clean(path)

    sr = dcmread(path)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == src.StudyInstanceUID
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID
    assert sr.Modality == "SR"
    if spec.bad_values:
        assert str(sr.PatientName) == "ANONYMOUS^"  # single component made explicit
        assert sr.PatientSex == "" and sr.PatientBirthDate == "" and sr.StudyID == ""
        assert "PatientAge" not in sr and "PatientWeight" not in sr
    else:
        assert str(sr.PatientName) == spec.patient_name
        assert sr.PatientID == "P12345" and sr.AccessionNumber == "ACC001"
        assert sr.PatientAge == "063Y"
    if not spec.patient_name.isascii():
        assert sr.SpecificCharacterSet == "ISO_IR 192"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID

    report = _report(path)
    (group,) = report.get_image_measurement_groups()
    (score,) = group.get_measurements(name=c.ANOMALY_SCORE)
    assert score.value == pytest.approx(res.score)
    variants = {m.name.meaning for m in group.get_measurements()}
    assert variants >= {"Anomaly score (mse)", "Anomaly score (max_abs)"}
    (verdict,) = group.get_qualitative_evaluations(name=c.ANOMALY_ASSESSMENT)
    assert verdict.value == c.ABNORMAL
    (ehr_status,) = group.get_qualitative_evaluations(name=c.EHR_STATUS)
    assert ehr_status.value == (c.EHR_USED if available else c.EHR_UNAVAILABLE)
    texts = {item.name.meaning: item.value for item in group[0].ContentSequence if item.ValueType == "TEXT"}
    if available:
        assert "EHR unavailable reason" not in texts
    else:
        assert "FHIR server unreachable" in texts["EHR unavailable reason"]
    params = [item.value for item in group[0].ContentSequence
              if item.name.meaning == "Algorithm Parameters"]
    assert {"steps=10", "noise_level=0.3", "threshold=0.5"} <= set(params)
    assert [s.referenced_sop_instance_uid for s in group.source_images] == [src.SOPInstanceUID]

    (roi,) = report.get_planar_roi_measurement_groups()
    region = roi.roi
    assert region is not None
    r = res.roi
    assert r is not None
    expected = [[r.x, r.y], [r.x + r.width, r.y], [r.x + r.width, r.y + r.height], [r.x, r.y + r.height],
                [r.x, r.y]]
    np.testing.assert_allclose(region.value, expected)
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    (obs,) = report.get_observer_contexts(observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"))
    assert obs.observer_identifying_attributes.name == "Diff3M"


def test_normal_result_without_roi_several_sources_and_predecessor(tmp_path: Path) -> None:
    frontal = make_source(SourceSpec(), instance=1)
    lateral = make_source(SourceSpec(), study_uid=str(frontal.StudyInstanceUID), instance=2, seed=1)
    res = make_result(96, 80, abnormal=False, ehr_used=False, roi=False)
    old = build_sr([frontal, lateral], res, make_ehr(), 1)
    prev = OutputRef(old.StudyInstanceUID, old.SeriesInstanceUID, old.SOPInstanceUID, old.SOPClassUID)
    path = _write(build_sr([frontal, lateral], res, make_ehr(), 2, previous=[prev]), tmp_path / "sr.dcm")
    # the scored image may be named instead of put first: same SR, same UIDs
    named = build_sr([lateral, frontal], res, make_ehr(), 2, previous=[prev],
                     scored_uid=frontal.SOPInstanceUID)
    assert named.SOPInstanceUID == dcmread(path).SOPInstanceUID
    assert_dciodvfy_clean(path)

    sr = dcmread(path)
    pre = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pre.ReferencedSOPInstanceUID == old.SOPInstanceUID
    report = _report(path)
    assert report.get_planar_roi_measurement_groups() == []
    (group,) = report.get_image_measurement_groups()
    assert group.get_qualitative_evaluations(name=c.ANOMALY_ASSESSMENT)[0].value == c.NORMAL
    assert group.get_qualitative_evaluations(name=c.EHR_STATUS)[0].value == c.EHR_NOT_USED
    assert {s.referenced_sop_instance_uid for s in group.source_images} == {
        frontal.SOPInstanceUID, lateral.SOPInstanceUID}


def test_roi_outside_the_image_is_clipped(tmp_path: Path) -> None:
    src = make_source()
    res = make_result(96, 80)
    res.roi = type(res.roi)(70, 90, 40, 40)  # type: ignore[misc]
    path = _write(build_sr([src], res, make_ehr(), 1), tmp_path / "sr.dcm")
    assert_dciodvfy_clean(path)
    (roi,) = _report(path).get_planar_roi_measurement_groups()
    assert roi.roi is not None
    np.testing.assert_allclose(roi.roi.value.max(axis=0), [80, 96])


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_bad_inputs_give_clear_errors() -> None:
    src = make_source()
    with pytest.raises(SourceError, match="at least one source"):
        build_sr([], make_result(96, 80), make_ehr(), 1)
    other_study = make_source(seed=2)
    with pytest.raises(SourceError, match="different studies"):
        build_sr([src, other_study], make_result(96, 80), make_ehr(), 1)
    broken = make_source()
    broken.SOPInstanceUID = "not a uid"
    with pytest.raises(SourceError, match="SOPInstanceUID"):
        build_sr([broken], make_result(96, 80), make_ehr(), 1)
    with pytest.raises(ValueError, match="does not match the scored image"):
        build_sr([src], make_result(80, 96), make_ehr(), 1)
    with pytest.raises(SourceError, match="not among the sources"):
        build_sr([src], make_result(96, 80), make_ehr(), 1, scored_uid="1.2.3")
    nan = make_result(96, 80)
    nan.score = float("nan")
    with pytest.raises(ValueError, match="score"):
        build_sr([src], nan, make_ehr(), 1)
