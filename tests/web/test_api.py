"""JSON API against a migrated database with rows inserted: list, detail, rerun, retry, images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from diff3m.db.migrate import upgrade
from diff3m.db.models import AuditEvent, Delivery, DeliveryStatus, Study, StudyStatus
from diff3m.db.session import session_scope
from diff3m.web.app import create_app
from tests.web.factory import EHR_DOWN, WORKLIST, Seeded, make_settings, seed


def _accessions(resp: dict) -> list[str]:
    return [i["accession_number"] for i in resp["items"]]


def test_list_sorted_by_priority_then_score(client: TestClient, seeded: dict[int, Seeded]) -> None:
    body = client.get("/api/studies").json()
    assert body["total"] == len(WORKLIST)
    # stat first, then the two urgent ones by score (0.12 before 0.081), then routine by score, unscored last
    assert _accessions(body)[:5] == ["ACC0002", "ACC0004", "ACC0003", "ACC0006", "ACC0001"]
    assert set(_accessions(body)[5:]) == {"ACC0005", "ACC0007"}
    first = body["items"][0]
    assert first["priority"] == "stat" and first["abnormal"] is True and first["threshold"] == 0.05
    assert first["has_heatmap"] is True and first["instances"] == 1


def test_list_filters_and_paging(client: TestClient, seeded: dict[int, Seeded]) -> None:
    assert _accessions(client.get("/api/studies", params={"status": "failed"}).json()) == ["ACC0007"]
    urgent = client.get("/api/studies", params={"priority": ["urgent", "stat"]}).json()
    assert _accessions(urgent) == ["ACC0002", "ACC0004", "ACC0003"]
    normal = client.get("/api/studies", params={"abnormal": "false"}).json()
    assert _accessions(normal) == ["ACC0006", "ACC0001"]
    dated = client.get("/api/studies", params={"date_from": "2025-01-05", "date_to": "20250108"}).json()
    assert sorted(_accessions(dated)) == ["ACC0002", "ACC0003", "ACC0004"]
    assert _accessions(client.get("/api/studies", params={"q": "ACC0003"}).json()) == ["ACC0003"]
    page2 = client.get("/api/studies", params={"limit": 2, "offset": 2}).json()
    assert page2["total"] == len(WORKLIST) and page2["limit"] == 2 and page2["offset"] == 2
    assert _accessions(page2) == ["ACC0003", "ACC0006"]
    bad = client.get("/api/studies", params={"date_from": "yesterday"})
    assert bad.status_code == 422 and "date" in bad.text
    assert client.get("/api/studies", params={"status": "bogus"}).status_code == 422


def test_study_detail(client: TestClient, seeded: dict[int, Seeded]) -> None:
    s = seeded[2]
    body = client.get(f"/api/studies/{s.study_uid}").json()
    assert body["status"] == "done" and body["priority"] == "stat"
    assert body["score"] == 0.231 and body["abnormal"] is True and body["threshold"] == 0.05
    assert body["revision"] == 0 and body["timings"]["infer"] == 3.1 and body["timings"]["total"] == 4.5
    ehr = body["ehr"]
    assert ehr["available"] is True and ehr["reason"] is None
    assert ehr["age"] == 63.0 and ehr["sex"] == "F" and ehr["height"] is None
    assert ehr["values"]["bmi"] == 27.4
    assert ehr["sources"]["systolic"] == ["Observation/o-bp"] and ehr["sources"]["height"] == []
    assert [f["name"] for f in body["ehr_fields"]][:3] == ["sex", "age", "view"]
    kinds = {o["kind"]: o for o in body["outputs"]}
    assert set(kinds) == {"sr", "sc"}
    assert {o["sop_instance_uid"] for o in body["outputs"]} == set(s.output_uids)
    assert kinds["sr"]["superseded"] is False
    assert kinds["sr"]["destinations"] == ["PACS"]  # the dead ARCHIVE1 delivery did not get there
    assert sorted(kinds["sr"]["deliveries"]) == sorted(s.delivery_ids)
    dead = next(d for d in body["deliveries"] if d["status"] == "dead")
    assert dead["attempts"] == 8 and dead["last_error"] == "association rejected"
    assert body["model"]["version"] == "demo-0.1" and body["model"]["params"]["steps"] == 10


def test_detail_ehr_unavailable_and_not_fetched(client: TestClient, seeded: dict[int, Seeded]) -> None:
    ehr = client.get(f"/api/studies/{seeded[3].study_uid}").json()["ehr"]
    assert ehr["available"] is False and ehr["reason"] == EHR_DOWN
    assert ehr["age"] is None and ehr["sources"]["sex"] == ["dicom:PatientSex"]
    body = client.get(f"/api/studies/{seeded[7].study_uid}").json()
    assert body["status"] == "failed" and "out of memory" in body["error"]
    assert body["ehr"]["available"] is None and body["ehr"]["reason"] == "EHR not fetched yet"
    assert body["score"] is None and body["outputs"] == [] and body["model"] is None
    missing = client.get("/api/studies/1.2.3.4.5")
    assert missing.status_code == 404 and missing.json() == {"detail": "no study 1.2.3.4.5"}


def test_rerun_queues_study_and_audits(client: TestClient, settings, seeded: dict[int, Seeded]) -> None:
    uid = seeded[7].study_uid
    r = client.post(f"/api/studies/{uid}/rerun")
    assert r.status_code == 200 and r.json()["status"] == "queued"
    with session_scope(settings.database.url) as s:
        study = s.scalar(select(Study).where(Study.study_uid == uid))
        assert study.status == StudyStatus.QUEUED and study.attempts == 0 and study.error is None
        ev = s.scalar(select(AuditEvent).where(AuditEvent.kind == "rerun_requested"))
        assert ev.study_id == study.id and ev.detail["from"] == "failed"
        study.status = StudyStatus.RECEIVING
    busy = client.post(f"/api/studies/{uid}/rerun")
    assert busy.status_code == 409 and "wait until it is complete" in busy.json()["detail"]
    assert client.post("/api/studies/9.9.9/rerun").status_code == 404


def test_retry_delivery(client: TestClient, settings, seeded: dict[int, Seeded]) -> None:
    done_id, dead_id = seeded[2].delivery_ids
    r = client.post(f"/api/deliveries/{dead_id}/retry")
    assert r.status_code == 200 and r.json()["status"] == "pending"
    with session_scope(settings.database.url) as s:
        d = s.get(Delivery, dead_id)
        assert d.status == DeliveryStatus.PENDING and d.attempts == 0
        assert s.scalar(select(AuditEvent).where(AuditEvent.kind == "delivery_retry_requested")) is not None
    pending_id = seeded[3].delivery_ids[0]
    assert client.post(f"/api/deliveries/{pending_id}/retry").status_code == 200
    with session_scope(settings.database.url) as s:
        assert s.get(Delivery, pending_id).attempts == 2  # a pending one keeps its count
    assert client.post(f"/api/deliveries/{done_id}/retry").status_code == 409
    assert client.post("/api/deliveries/999999/retry").status_code == 404
    assert client.post("/deliveries/999999/retry", data={"study_uid": "x"}).status_code == 404  # the form


def _png(resp) -> Image.Image:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(resp.content))


def test_heatmap_and_thumbnail(client: TestClient, seeded: dict[int, Seeded]) -> None:
    uid = seeded[2].study_uid  # nodule at (0.32, 0.42) of the image
    heat = np.asarray(_png(client.get(f"/api/studies/{uid}/heatmap.png")).convert("RGB")).astype(int)
    orig = np.asarray(_png(client.get(f"/api/studies/{uid}/original.png")).convert("RGB")).astype(int)
    assert heat.shape == orig.shape
    h, w = heat.shape[:2]
    spot = heat[int(0.42 * h), int(0.32 * w)]
    far = heat[int(0.9 * h), int(0.1 * w)]
    assert np.ptp(spot) > 60, f"overlay not coloured at the anomaly: {spot}"
    assert np.ptp(far) < 10, f"overlay coloured far from the anomaly: {far}"
    assert np.ptp(orig[int(0.42 * h), int(0.32 * w)]) == 0  # the original stays grey
    thumb = _png(client.get(f"/api/studies/{uid}/thumbnail.png"))
    assert max(thumb.size) <= 256 and thumb.mode == "RGB"
    etag = client.get(f"/api/studies/{uid}/thumbnail.png").headers["etag"]
    assert client.get(f"/api/studies/{uid}/thumbnail.png", headers={"If-None-Match": etag}).status_code == 304


def test_images_without_result(client: TestClient, settings, seeded: dict[int, Seeded]) -> None:
    uid = seeded[5].study_uid  # still inferring
    assert client.get(f"/api/studies/{uid}/heatmap.png").status_code == 404
    assert _png(client.get(f"/api/studies/{uid}/thumbnail.png")).mode == "L"
    with session_scope(settings.database.url) as s:  # the stored file vanished: 404, not a crash
        path = s.scalar(select(Study).where(Study.study_uid == uid)).instances[0].path
    (Path(settings.node.storage_dir) / path).unlink()
    r = client.get(f"/api/studies/{uid}/original.png")
    assert r.status_code == 404 and "missing" in r.text
    assert client.get("/api/studies/1.2.3/thumbnail.png").status_code == 404


def test_openapi_lists_the_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for p in ("/api/studies", "/api/studies/{study_uid}", "/api/studies/{study_uid}/rerun",
              "/api/deliveries/{delivery_id}/retry", "/api/studies/{study_uid}/heatmap.png",
              "/api/studies/{study_uid}/thumbnail.png", "/healthz", "/readyz", "/metrics"):
        assert p in paths, p
    assert client.get("/docs").status_code == 200


def test_api_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    upgrade(postgres_url)
    settings = make_settings(postgres_url, tmp_path)
    seeds = {s.n: seed(settings, s) for s in WORKLIST[:4]}
    with TestClient(create_app(settings)) as c:
        assert _accessions(c.get("/api/studies").json()) == ["ACC0002", "ACC0004", "ACC0003", "ACC0001"]
        top = c.get("/api/studies", params={"abnormal": "true", "limit": 1}).json()
        assert _accessions(top) == ["ACC0002"]
        body = c.get(f"/api/studies/{seeds[2].study_uid}").json()
        assert body["ehr"]["bmi"] == 27.4 and body["outputs"][0]["destinations"] == ["PACS"]
        assert c.post(f"/api/studies/{seeds[2].study_uid}/rerun").json()["status"] == "queued"
        assert c.post(f"/api/deliveries/{seeds[2].delivery_ids[1]}/retry").json()["status"] == "pending"
        assert _png(c.get(f"/api/studies/{seeds[2].study_uid}/heatmap.png")).mode == "RGB"
