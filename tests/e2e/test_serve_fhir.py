"""End to end with a real FHIR server: EHR pulled, Observation written once, worklist priority raised."""

from __future__ import annotations

from tests import dicom_factory, services
from tests.e2e.conftest import diff3m_process, storescu, wait_study, write_config
from tests.fhir_server import MRN_SYSTEM


def test_serve_with_fhir(tmp_path, orthanc, fhir_server, tiny_checkpoint):
    cfg = write_config(
        tmp_path / "node", checkpoint=str(tiny_checkpoint), fhir_url=fhir_server.base_url,
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
        routing=[{"name": "ai", "send": "results", "to": "pacs"}],
    )
    # env overrides: our MRN system, and every result abnormal so the ServiceRequest must be raised
    env = {"DIFF3M_FHIR__PATIENT_IDENTIFIER_SYSTEM": MRN_SYSTEM, "DIFF3M_MODEL__THRESHOLD": "-1"}
    ds = dicom_factory.make_dataset(rows=96, cols=96, view_position="PA", accession="ACC0001",
                                    patient=dicom_factory.Patient(patient_id="DIFF3M-0001"))
    ds.StudyDate = "20240315"
    src = dicom_factory.write_file(tmp_path / "in" / "cxr.dcm", ds)
    log = tmp_path / "serve.log"
    with diff3m_process("serve", "--config", str(cfg.path), log=log, env=env) as proc:
        services.wait_port("127.0.0.1", cfg.dicom_port, 90, proc)
        storescu(cfg.dicom_port, src)
        study = wait_study(cfg, str(ds.StudyInstanceUID), log=log)

    assert study["abnormal"] is True and study["priority"] == "urgent"
    ehr = study["ehr"]
    values = ehr.get("values", ehr)
    assert values["bmi"] is not None and values["systolic"] is not None, ehr
    observations = fhir_server.search("Observation?code=https://diff3m.org/fhir/CodeSystem/diff3m|anomaly-score")
    ours = [o for o in observations
            if any(i.get("system") == "urn:dicom:uid" for i in o.get("identifier", []))]
    assert len(ours) == 1 and ours[0]["interpretation"][0]["coding"][0]["code"] == "A"
    requests = fhir_server.search("ServiceRequest?identifier=ACC0001")
    assert requests and requests[0]["priority"] == "urgent"
