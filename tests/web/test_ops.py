"""/healthz, /readyz (database, broker, model flag, disk), /metrics from the database, JSON logs."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from diff3m.config import Settings
from diff3m.logging_setup import JsonFormatter, configure_logging
from diff3m.web.app import create_app
from diff3m.web.metrics import stage_histogram
from diff3m.web.readiness import mark_model_loaded, mark_model_unloaded
from tests.web.factory import WORKLIST, Seeded, make_settings


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json()["status"] == "ok"


def test_readyz_tracks_the_model_flag(client: TestClient, settings: Settings) -> None:
    r = client.get("/readyz")
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"] and checks["disk"]["ok"]
    assert not checks["model"]["ok"] and "diff3m worker" in checks["model"]["detail"]
    skipped = client.get("/readyz", params={"skip": "model"})
    assert skipped.status_code == 200 and "model" not in skipped.json()["checks"]
    assert client.get("/readyz", params={"skip": "nonsense"}).status_code == 422
    mark_model_loaded(settings.database.url, "Diff3M", "demo-0.1", "cpu", worker="gpu-1:42")
    mark_model_loaded(settings.database.url, "Diff3M", "demo-0.1", "cpu", worker="gpu-2:43")
    mark_model_unloaded(settings.database.url, worker="gpu-1:42")
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True, r.json()
    assert "1 worker" in r.json()["checks"]["model"]["detail"]
    mark_model_unloaded(settings.database.url, worker="gpu-2:43")
    assert client.get("/readyz").status_code == 503


def test_readyz_reports_broker_and_disk(sqlite_url: str, tmp_path: Path, redis_url: str) -> None:
    good = make_settings(sqlite_url, tmp_path)
    mark_model_loaded(sqlite_url, "Diff3M", "demo", "cpu", worker="w")
    redis_ok = good.model_copy(update={"queue": good.queue.model_copy(update={"broker_url": redis_url})})
    with TestClient(create_app(redis_ok)) as c:
        assert c.get("/readyz").json()["checks"]["broker"]["ok"] is True
    closed = good.model_copy(update={"queue": good.queue.model_copy(
        update={"broker_url": "redis://:pw@127.0.0.1:1/0"})})
    with TestClient(create_app(closed)) as c:
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["checks"]["broker"]["ok"] is False
        assert "pw" not in r.text
    full = good.model_copy(update={"node": good.node.model_copy(update={"min_free_disk_mb": 10**12})})
    with TestClient(create_app(full)) as c:
        disk = c.get("/readyz").json()["checks"]["disk"]
        assert disk["ok"] is False and "required" in disk["detail"]
    nodb = make_settings(f"sqlite:///{tmp_path / 'missing' / 'no.sqlite'}", tmp_path)  # never migrated
    with TestClient(create_app(nodb)) as c:
        assert c.get("/readyz").json()["checks"]["model"]["ok"] is False


def _metrics(client: TestClient) -> dict[str, list]:
    text = client.get("/metrics").text
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            out.setdefault(sample.name, []).append(sample)
    return out


def _value(samples: list, **labels: str) -> float:
    return next(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_from_the_database(client: TestClient, seeded: dict[int, Seeded]) -> None:
    client.get("/api/studies")
    m = _metrics(client)
    assert _value(m["diff3m_db_up"]) == 1
    assert _value(m["diff3m_instances_received_total"]) == len(WORKLIST)
    assert _value(m["diff3m_studies"], status="done") == 5
    assert _value(m["diff3m_studies"], status="failed") == 1
    assert _value(m["diff3m_studies"], status="inferring") == 1
    assert _value(m["diff3m_queue_depth"], queue="deliveries") == 1  # one pending delivery
    assert _value(m["diff3m_queue_depth"], queue="studies") == 0
    assert _value(m["diff3m_deliveries_dead"]) == 1
    assert _value(m["diff3m_deliveries"], kind="dicom", status="done") == 3
    # failures: dead 8 + pending 2 + done (1-1) + (1-1) + (3-1)
    assert _value(m["diff3m_delivery_failures_total"]) == 12
    assert _value(m["diff3m_ehr_snapshots"], available="false") == 1
    assert abs(_value(m["diff3m_ehr_availability_ratio"]) - 5 / 6) < 1e-9
    # five studies have timings; infer took 3.1 s in each
    assert _value(m["diff3m_stage_seconds_count"], stage="infer") == 5
    assert _value(m["diff3m_stage_seconds_bucket"], stage="infer", le="2.0") == 0
    assert _value(m["diff3m_stage_seconds_bucket"], stage="infer", le="5.0") == 5
    assert abs(_value(m["diff3m_stage_seconds_sum"], stage="total") - 22.5) < 1e-9
    assert _value(m["diff3m_http_requests_total"], route="/api/studies", status="200", method="GET") == 1


def test_metrics_survive_a_broken_database(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'unmigrated.sqlite'}", tmp_path)
    with TestClient(create_app(settings)) as c:
        m = _metrics(c)
        assert _value(m["diff3m_db_up"]) == 0 and "diff3m_studies" not in m


def test_stage_histogram_ignores_junk() -> None:
    h = stage_histogram([{"infer": 1.0, "bad": "x", "neg": -1}, {"infer": 20.0}, {}], (5.0, 30.0))
    assert h == {"infer": ([("5.0", 1.0), ("30.0", 2.0), ("+Inf", 2.0)], 21.0)}


def test_json_logs_carry_uids_not_phi() -> None:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream)
    try:
        logging.getLogger("diff3m.test").info("stored", extra={"study_uid": "1.2.3", "patient_name": "Doe^J"})
    finally:
        logging.getLogger().removeHandler(handler)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["msg"] == "stored" and line["study_uid"] == "1.2.3" and line["level"] == "info"
    assert "patient_name" not in line and "Doe" not in stream.getvalue()
    record = logging.makeLogRecord({"msg": "x", "token": "t"})
    assert "token" not in json.loads(JsonFormatter().format(record))
