"""Scale-out: `diff3m scp` + `diff3m web` + `diff3m worker` (own storage root) on PostgreSQL + Redis."""

from __future__ import annotations

import uuid

import pydicom

from tests import dicom_factory, services
from tests.e2e.conftest import diff3m_process, storescu, wait_study, write_config
from tests.e2e.test_serve import SC_CLASS, SR_CLASS, _classes_in_study


def test_scale_out_with_separate_worker_storage(tmp_path, orthanc, postgres_url, redis_url, tiny_checkpoint):
    broker = f"{redis_url}/{1 + uuid.uuid4().int % 14}"
    cfg = write_config(
        tmp_path / "node", checkpoint=str(tiny_checkpoint), database_url=postgres_url, broker_url=broker,
        destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1",
                       "port": orthanc.dicom_port}],
        routing=[{"name": "ai", "send": "results", "to": "pacs"}],
    )
    worker_storage = tmp_path / "worker-storage"
    src = dicom_factory.write_file(tmp_path / "in" / "cxr.dcm", rows=96, cols=96, view_position="AP")
    study_uid = str(pydicom.dcmread(src).StudyInstanceUID)
    c = ["--config", str(cfg.path)]
    with (
        diff3m_process("scp", *c, log=tmp_path / "scp.log") as scp,
        diff3m_process("web", *c, log=tmp_path / "web.log") as web,
        diff3m_process("worker", *c, log=tmp_path / "worker.log",
                       env={"DIFF3M_NODE__STORAGE_DIR": str(worker_storage)}),
    ):
        services.wait_port("127.0.0.1", cfg.dicom_port, 90, scp)
        services.wait_port("127.0.0.1", cfg.web_port, 90, web)
        storescu(cfg.dicom_port, src)
        study = wait_study(cfg, study_uid, log=tmp_path / "worker.log")

    assert study["score"] is not None
    assert _classes_in_study(orthanc, study_uid) == sorted([SR_CLASS, SC_CLASS])
    # the worker never read the listener's disk: it fetched the source through WADO-RS into its own root
    fetched = [p for p in worker_storage.rglob("*") if p.is_file()]
    assert any(pydicom.dcmread(p).SOPInstanceUID == pydicom.dcmread(src).SOPInstanceUID for p in fetched)
