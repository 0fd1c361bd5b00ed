"""End to end: storescu -> `diff3m serve` -> SR + heatmap SC at Orthanc and storescp, one each."""

from __future__ import annotations

import pydicom

from tests import dicom_factory, services
from tests.e2e.conftest import diff3m_process, storescu, wait_study, write_config

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _routes(orthanc: services.Orthanc, scp: services.StoreScp) -> tuple[list[dict], list[dict]]:
    destinations = [
        {"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port},
        {"name": "archive", "ae_title": scp.aet, "host": "127.0.0.1", "port": scp.port},
    ]
    routing = [
        {"name": "ai-results", "send": "results", "to": "pacs"},
        {"name": "forward-dx", "when": {"Modality": "DX"}, "send": ["originals", "results"], "to": "archive"},
    ]
    return destinations, routing


def _classes_in_study(orthanc: services.Orthanc, study_uid: str) -> list[str]:
    out = []
    for oid in orthanc.instances():
        tags = orthanc.get(f"/instances/{oid}/simplified-tags")
        if tags["StudyInstanceUID"] == study_uid:
            out.append(tags["SOPClassUID"])
    return sorted(out)


def test_serve_end_to_end(tmp_path, orthanc, storescp, tiny_checkpoint):
    destinations, routing = _routes(orthanc, storescp)
    cfg = write_config(tmp_path / "node", checkpoint=str(tiny_checkpoint), destinations=destinations,
                       routing=routing)
    src = dicom_factory.write_file(tmp_path / "in" / "cxr.dcm", rows=128, cols=112, view_position="PA",
                                   accession="ACC9")
    lateral = dicom_factory.write_file(tmp_path / "in" / "lat.dcm", rows=64, cols=64, view_position="LL",
                                       study_uid=str(pydicom.dcmread(src).StudyInstanceUID))
    study_uid = str(pydicom.dcmread(src).StudyInstanceUID)
    log = tmp_path / "serve.log"
    with diff3m_process("serve", "--config", str(cfg.path), log=log) as proc:
        services.wait_port("127.0.0.1", cfg.dicom_port, 90, proc)
        services.wait_port("127.0.0.1", cfg.web_port, 30, proc)
        storescu(cfg.dicom_port, src, lateral)
        study = wait_study(cfg, study_uid, log=log)
        # a duplicate send of the same study must not produce a second SR/SC at the PACS
        storescu(cfg.dicom_port, src)

    assert study["score"] is not None and study["abnormal"] in (True, False)
    assert study["priority"] in ("routine", "urgent", "asap", "stat")
    assert "ehr" in study and study["outputs"]
    assert _classes_in_study(orthanc, study_uid) == sorted([SR_CLASS, SC_CLASS])

    received = [pydicom.dcmread(p) for p in storescp.files()]
    by_class = sorted(str(d.SOPClassUID) for d in received)
    assert by_class.count(SR_CLASS) == 1 and by_class.count(SC_CLASS) == 1
    assert len(received) == 4  # two originals (frontal + lateral) + SR + SC
    for path, ds in zip(storescp.files(), received, strict=True):
        assert str(ds.StudyInstanceUID) == study_uid
        if str(ds.SOPClassUID) in (SR_CLASS, SC_CLASS):
            services.assert_dciodvfy_clean(path)
