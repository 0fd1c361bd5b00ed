"""EHR pull against the dev FHIR server: patient match, units, BP panels, window edges, ties, fallbacks."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pytest
from pydicom.dataset import Dataset

from diff3m.config import Settings, load_settings
from diff3m.fhir.client import FhirClient
from diff3m.fhir.ehr import StudyContext, fetch_ehr, registry_for
from diff3m.fhir.patient import identifier_query
from diff3m.models.fields import DEFAULT_REGISTRY
from tests.fhir_server import MRN_SYSTEM, OTHER_MRN_SYSTEM, FhirDevServer, fhir_dev_server

STUDY_DATE = date(2024, 3, 15)


@pytest.fixture(scope="module")
def server() -> Iterator[FhirDevServer]:
    with fhir_dev_server() as s:
        yield s


def settings_for(server: FhirDevServer, **fhir: Any) -> Settings:
    return load_settings(fhir={"base_url": server.base_url, "patient_identifier_system": MRN_SYSTEM, **fhir})


def obs_ref(server: FhirDevServer, tag: str) -> str:
    found = server.search(f"Observation?identifier=http://hospital.example.org/obs|{tag}")
    assert len(found) == 1, tag
    return f"Observation/{found[0]['id']}"


def patient_ref(server: FhirDevServer, mrn: str) -> str:
    found = server.search(f"Patient?identifier={MRN_SYSTEM}|{mrn}")
    assert len(found) == 1
    return f"Patient/{found[0]['id']}"


def test_metric_patient_with_bp_panel(server: FhirDevServer) -> None:
    rec = fetch_ehr(settings_for(server), StudyContext("DIFF3M-0001", study_date=STUDY_DATE, view="PA"))
    assert rec.available and rec.reason is None
    assert rec.values == {"sex": "F", "age": 63.0, "view": "PA", "bmi": 27.4, "systolic": 132.0,
                          "diastolic": 84.0, "height": 165.0, "weight": 74.6}
    panel = obs_ref(server, "p1-bp")
    assert rec.sources["systolic"] == [panel] and rec.sources["diastolic"] == [panel]
    assert rec.sources["weight"] == [obs_ref(server, "p1-weight")]  # not the 2023 one (outside window)
    assert rec.sources["sex"] == [patient_ref(server, "DIFF3M-0001")]
    assert rec.sources["view"] == ["dicom:ViewPosition"]


def test_us_units_kpa_tie_average_and_missing_field(server: FhirDevServer) -> None:
    rec = fetch_ehr(settings_for(server), StudyContext("DIFF3M-0002", study_date=STUDY_DATE, view="AP"))
    assert rec.available
    assert rec.values["weight"] == pytest.approx(81.6466, abs=1e-3)  # 180 [lb_av]
    assert rec.values["height"] == pytest.approx(177.8)  # 70 [in_i]
    assert rec.values["diastolic"] == pytest.approx(90.0074, abs=1e-3)  # 12 kPa
    # 140 two days before and 150 two days after: a tie, averaged; the entered-in-error 210 is ignored
    assert rec.values["systolic"] == pytest.approx(145.0)
    tied = [obs_ref(server, "p2-sys-a"), obs_ref(server, "p2-sys-b")]
    assert sorted(rec.sources["systolic"]) == sorted(tied)
    assert rec.values["bmi"] is None and "bmi" not in rec.sources
    assert rec.values["sex"] == "M" and rec.values["age"] == 75.0


def test_window_edges(server: FhirDevServer) -> None:
    ctx = StudyContext("DIFF3M-0003", study_date=STUDY_DATE)
    at_edge = fetch_ehr(settings_for(server, ehr_window_days=90), ctx)
    assert at_edge.values["weight"] == 60.0  # exactly 90 days before: inside
    assert at_edge.sources["weight"] == [obs_ref(server, "p3-weight-edge")]
    assert at_edge.values["height"] == 162.0  # 1.62 m, a date-only effectiveDateTime
    assert at_edge.values["systolic"] == 118.0 and at_edge.values["diastolic"] == 76.0  # 55284-4 panel
    narrower = fetch_ehr(settings_for(server, ehr_window_days=89), ctx)
    assert narrower.values["weight"] is None  # the 90-day one is out; the 91-day-after one too
    wider = fetch_ehr(settings_for(server, ehr_window_days=91), ctx)
    assert wider.values["weight"] == 60.0  # 90 days beats 91 days
    same_day = fetch_ehr(settings_for(server, ehr_window_days=0), ctx)
    assert same_day.values["systolic"] == 118.0 and same_day.values["height"] is None


def test_dicom_fallback_fills_fields_fhir_lacks(server: FhirDevServer) -> None:
    ctx = StudyContext("DIFF3M-0002", study_date=STUDY_DATE, sex="F", age="040Y", view="PA",
                       weight_kg=99.0, size_m=1.5)
    rec = fetch_ehr(settings_for(server, ehr_window_days=0), ctx)
    assert rec.values["sex"] == "M"  # FHIR wins over DICOM
    assert rec.values["weight"] == 99.0 and rec.sources["weight"] == ["dicom:PatientWeight"]
    assert rec.values["height"] == 150.0 and rec.sources["height"] == ["dicom:PatientSize"]


def test_no_match_is_unavailable_with_dicom_demographics(server: FhirDevServer) -> None:
    ctx = StudyContext("NOBODY-9", study_date=STUDY_DATE, sex="F", age="052Y", view="AP")
    rec = fetch_ehr(settings_for(server), ctx)
    assert not rec.available and "no FHIR Patient" in (rec.reason or "")
    assert rec.values["sex"] == "F" and rec.values["age"] == 52.0 and rec.values["view"] == "AP"
    assert rec.values["weight"] is None
    assert rec.sources["age"] == ["dicom:PatientAge"]


def test_several_matches_are_never_guessed(server: FhirDevServer) -> None:
    # DIFF3M-0003 exists under two issuers: a value-only search is ambiguous
    s = load_settings(fhir={"base_url": server.base_url})
    rec = fetch_ehr(s, StudyContext("DIFF3M-0003", study_date=STUDY_DATE))
    assert not rec.available and "2 FHIR Patients" in (rec.reason or "")
    assert rec.values["sex"] is None


def test_issuer_mapping_selects_the_identifier_system(server: FhirDevServer) -> None:
    s = load_settings(fhir={"base_url": server.base_url,
                            "issuer_systems": {"HOSP": MRN_SYSTEM, "CLINB": OTHER_MRN_SYSTEM}})
    hosp = fetch_ehr(s, StudyContext("DIFF3M-0003", issuer="HOSP", study_date=STUDY_DATE))
    clinb = fetch_ehr(s, StudyContext("DIFF3M-0003", issuer="CLINB", study_date=STUDY_DATE))
    assert hosp.available and hosp.values["sex"] == "F" and hosp.values["weight"] == 60.0
    assert clinb.available and clinb.values["sex"] == "M" and clinb.values["weight"] is None
    unknown = fetch_ehr(s, StudyContext("DIFF3M-0003", issuer="ELSEWHERE", study_date=STUDY_DATE))
    assert not unknown.available and "not mapped" in (unknown.reason or "")
    assert identifier_query(s.fhir, "X1", "HOSP") == f"{MRN_SYSTEM}|X1"


def test_extra_fields_by_configuration(server: FhirDevServer) -> None:
    s = settings_for(server, extra_fields=[{"name": "heart_rate", "loinc": "8867-4", "unit": "/min"}])
    assert registry_for(s).names == DEFAULT_REGISTRY.names + ["heart_rate"]
    rec = fetch_ehr(s, StudyContext("DIFF3M-0001", study_date=STUDY_DATE))
    assert rec.values["heart_rate"] == 72.0 and rec.sources["heart_rate"] == [obs_ref(server, "p1-hr")]


def test_no_base_url_is_image_only() -> None:
    rec = fetch_ehr(load_settings(), StudyContext("DIFF3M-0001", birth_date=date(1960, 5, 20),
                                                  study_date=STUDY_DATE, sex="F"))
    assert not rec.available and "not configured" in (rec.reason or "")
    assert rec.values["age"] == 63.0 and rec.sources["age"] == ["dicom:PatientBirthDate"]


def test_study_context_from_dataset_tolerates_bad_values() -> None:
    ds = Dataset()
    ds.PatientID = "DIFF3M-0001"
    ds.IssuerOfPatientID = "HOSP"
    ds.StudyDate = "20240315"
    ds.AccessionNumber = "ACC0001"
    ds.PatientSex = "F"
    ds.PatientAge = "063Y"
    ds.PatientBirthDate = "notadate"
    ds.ViewPosition = "PA"
    ds.PatientWeight = "74.6"
    ds.StudyInstanceUID = "1.2.3.4"
    ctx = StudyContext.from_dataset(ds)
    assert ctx == StudyContext("DIFF3M-0001", "HOSP", STUDY_DATE, "ACC0001", "F", "063Y", None, "PA",
                               None, 74.6, "1.2.3.4")
    assert StudyContext.from_dataset(Dataset()).patient_id is None


def test_search_pages_through_link_next(server: FhirDevServer) -> None:
    with FhirClient(server.base_url) as client:
        found = client.search("Observation", {"code": "http://loinc.org|29463-7", "_count": "2"})
        assert client.requests == 3  # 5 body weights, 2 per page
    assert len({str(o.id) for o in found}) == 5  # type: ignore[attr-defined]
