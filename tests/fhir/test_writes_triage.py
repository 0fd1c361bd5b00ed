"""Result Observation writes (conditional, never duplicated) and worklist triage (never lowered)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from diff3m.config import Settings, load_settings
from diff3m.fhir.errors import FhirRetryableError, PatientMatchError
from diff3m.fhir.triage import raise_priority, rank
from diff3m.fhir.writes import CODE_SYSTEM, DEVICE_SYSTEM, SCORE_CODE, ObservationInput, write_observation
from tests.fhir_server import MRN_SYSTEM, FhirDevServer, fhir_dev_server
from tests.services import free_port

STUDY_UID = "1.2.826.0.1.3680043.8.498.1001"
SR_UID = "1.2.826.0.1.3680043.8.498.1002"


@pytest.fixture(scope="module")
def fhir_server() -> Iterator[FhirDevServer]:
    """One server for this module (each test uses its own UIDs / accession numbers)."""
    with fhir_dev_server() as s:
        yield s


def settings_for(server: FhirDevServer) -> Settings:
    return load_settings(fhir={"base_url": server.base_url, "patient_identifier_system": MRN_SYSTEM})


def result(sr_uid: str = SR_UID, abnormal: bool = True, version: str = "1.0.0",
           study_uid: str = STUDY_UID) -> ObservationInput:
    return ObservationInput(study_uid=study_uid, sr_sop_instance_uid=sr_uid, score=0.83, abnormal=abnormal,
                            threshold=0.5, model_name="diff3m-demo", model_version=version,
                            patient_id="DIFF3M-0001")


def test_conditional_create_twice_gives_one_observation(fhir_server: FhirDevServer) -> None:
    s = settings_for(fhir_server)
    first = write_observation(s, result())
    again = write_observation(s, result())
    assert first == again
    found = fhir_server.search(f"Observation?identifier=urn:dicom:uid|urn:oid:{SR_UID}")
    assert [o["id"] for o in found] == [first]
    obs = found[0]
    assert obs["status"] == "final"
    assert obs["category"][0]["coding"][0]["code"] == "imaging"
    assert obs["code"]["coding"][0] == {"system": CODE_SYSTEM, "code": SCORE_CODE,
                                        "display": "Diff3M chest X-ray anomaly score"}
    assert obs["valueQuantity"]["value"] == 0.83
    assert obs["interpretation"][0]["coding"][0]["code"] == "A"
    patient = fhir_server.search(f"Patient?identifier={MRN_SYSTEM}|DIFF3M-0001")[0]
    assert obs["subject"]["reference"] == f"Patient/{patient['id']}"
    assert obs["derivedFrom"][0]["identifier"] == {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}
    assert "partOf" not in obs  # no ImagingStudy on the server
    devices = fhir_server.search(f"Device?identifier={DEVICE_SYSTEM}|diff3m-demo:1.0.0")
    assert len(devices) == 1 and obs["device"]["reference"] == f"Device/{devices[0]['id']}"
    # another SR (a re-run with another model version) is another Observation, with its own Device
    other = write_observation(s, result("1.2.826.0.1.3680043.8.498.1003", abnormal=False, version="1.1.0"))
    assert other != first
    normal = fhir_server.get(f"Observation/{other}")
    assert normal["interpretation"][0]["coding"][0]["code"] == "N"
    assert len(fhir_server.search(f"Device?identifier={DEVICE_SYSTEM}|diff3m-demo:1.0.0")) == 1


def test_imaging_study_is_referenced_when_it_exists(fhir_server: FhirDevServer) -> None:
    study_uid, sr_uid = "1.2.826.0.1.3680043.8.498.2001", "1.2.826.0.1.3680043.8.498.2002"
    study = fhir_server.post("ImagingStudy", {
        "resourceType": "ImagingStudy", "status": "available",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "subject": {"reference": "Patient/x"}})
    oid = write_observation(settings_for(fhir_server), result(sr_uid, study_uid=study_uid))
    obs = fhir_server.get(f"Observation/{oid}")
    assert obs["partOf"] == [{"reference": f"ImagingStudy/{study['id']}"}]
    assert obs["derivedFrom"][0]["reference"] == f"ImagingStudy/{study['id']}"


def test_write_for_unknown_patient_is_refused_not_guessed(fhir_server: FhirDevServer) -> None:
    sr_uid = "1.2.826.0.1.3680043.8.498.3002"
    inp = ObservationInput(STUDY_UID, sr_uid, 0.1, False, 0.5, "diff3m-demo", "1.0.0", patient_id="NOBODY")
    with pytest.raises(PatientMatchError) as err:
        write_observation(settings_for(fhir_server), inp)
    assert err.value.retryable  # the patient may be registered later: the outbox tries again
    assert fhir_server.search(f"Observation?identifier=urn:dicom:uid|urn:oid:{sr_uid}") == []
    ambiguous = ObservationInput(STUDY_UID, sr_uid, 0.1, False, 0.5, "diff3m-demo", "1.0.0",
                                 patient_id="DIFF3M-0003")
    with pytest.raises(PatientMatchError, match="not guessing") as err:
        write_observation(load_settings(fhir={"base_url": fhir_server.base_url}), ambiguous)
    assert not err.value.retryable  # waiting does not resolve two patients with one MRN
    assert fhir_server.search(f"Observation?identifier=urn:dicom:uid|urn:oid:{sr_uid}") == []


def test_write_to_a_down_server_raises_retryable() -> None:
    s = load_settings(fhir={"base_url": f"http://127.0.0.1:{free_port()}", "max_retries": 1})
    with pytest.raises(FhirRetryableError) as err:
        write_observation(s, result())
    assert err.value.retryable and "ConnectError" in err.value.reason


def sr_of(server: FhirDevServer, accession: str) -> dict:
    found = server.search(f"ServiceRequest?identifier={accession}")
    assert len(found) == 1
    return found[0]


def test_priority_is_raised_and_never_lowered(fhir_server: FhirDevServer) -> None:
    s = settings_for(fhir_server)
    before = sr_of(fhir_server, "ACC0002")
    up = raise_priority(s, "ACC0002", "urgent")
    assert up.changed and (up.old_priority, up.new_priority) == ("routine", "urgent")
    assert up.resource_id == before["id"] and up.version_before == before["meta"]["versionId"]
    after = sr_of(fhir_server, "ACC0002")
    assert after["priority"] == "urgent"
    assert up.version_after == after["meta"]["versionId"] != up.version_before
    assert after["identifier"] == before["identifier"] and after["subject"] == before["subject"]

    same = raise_priority(s, "ACC0002", "urgent")
    assert not same.changed and same.old_priority == "urgent"
    stat = raise_priority(s, "ACC0002", "stat")
    assert stat.changed and stat.old_priority == "urgent" and stat.new_priority == "stat"
    lower = raise_priority(s, "ACC0002", "routine")
    assert not lower.changed and "already" in lower.reason
    assert sr_of(fhir_server, "ACC0002")["priority"] == "stat"
    assert sr_of(fhir_server, "ACC0001")["priority"] == "routine"  # the others untouched


def test_triage_without_service_request_changes_nothing(fhir_server: FhirDevServer) -> None:
    out = raise_priority(settings_for(fhir_server), "ACC9999", "urgent")
    assert not out.changed and out.resource_id is None and "no ServiceRequest" in out.reason
    with pytest.raises(ValueError):
        raise_priority(settings_for(fhir_server), "ACC0001", "whenever")
    assert rank(None) == 0 and rank("stat") == 3
