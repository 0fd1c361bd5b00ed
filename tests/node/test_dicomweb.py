"""STOW-RS through the same ingest path, and WADO-RS returning the stored file (FastAPI TestClient)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pydicom
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from diff3m.config import Settings
from diff3m.db.models import Instance
from diff3m.db.session import session_scope
from diff3m.node.dicomweb import dicomweb_router, split_multipart
from tests.dicom_factory import make_dataset, to_bytes

BOUNDARY = "diff3m-test-boundary"


def _multipart(parts: list[tuple[str, bytes]]) -> bytes:
    out = b""
    for ctype, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _client(settings: Settings) -> TestClient:
    app = FastAPI()
    app.include_router(dicomweb_router(settings))
    return TestClient(app)


HEADERS = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}


def test_stow_all_ok_then_wado(settings: Settings) -> None:
    a = to_bytes(make_dataset(rows=8, cols=8, study_uid="1.7.1", series_uid="1.7.1.1", sop_uid="1.7.1.1.1"))
    b = to_bytes(make_dataset(rows=8, cols=8, study_uid="1.7.1", series_uid="1.7.1.1", sop_uid="1.7.1.1.2"))
    client = _client(settings)
    body = _multipart([("application/dicom", a), ("application/dicom", b)])
    r = client.post("/dicomweb/studies", content=body,
                    headers={**HEADERS, "Accept": "application/dicom+json"})
    assert r.status_code == 200, r.text
    body = r.json()
    refs = body["00081199"]["Value"]
    assert [x["00081155"]["Value"][0] for x in refs] == ["1.7.1.1.1", "1.7.1.1.2"]
    assert "00081198" not in body
    url = refs[0]["00081190"]["Value"][0]
    assert url.endswith("/dicomweb/studies/1.7.1/series/1.7.1.1/instances/1.7.1.1.1")
    got = client.get("/dicomweb/studies/1.7.1/series/1.7.1.1/instances/1.7.1.1.1")
    assert got.status_code == 200 and got.headers["content-type"] == "application/dicom"
    assert got.content == a
    multi = client.get("/dicomweb/studies/1.7.1/series/1.7.1.1/instances/1.7.1.1.2",
                       headers={"Accept": 'multipart/related; type="application/dicom"'})
    boundary = multi.headers["content-type"].split("boundary=")[1]
    assert [p.data for p in split_multipart(multi.content, boundary)] == [b]
    assert client.get("/dicomweb/studies/1.7.1/series/9.9/instances/1.7.1.1.1").status_code == 404
    assert client.get("/dicomweb/studies/1.7.1/series/1.7.1.1/instances/1.2.3").status_code == 404


def test_stow_partial_failure_listed_in_xml(settings: Settings) -> None:
    good = to_bytes(make_dataset(rows=8, cols=8, sop_uid="1.8.1"))
    nopix = make_dataset(rows=8, cols=8, sop_uid="1.8.2")
    del nopix.PixelData
    r = _client(settings).post(
        "/dicomweb/studies",
        content=_multipart([("application/dicom", good), ("application/dicom", to_bytes(nopix)),
                            ("application/dicom", b"not dicom at all")]),
        headers={**HEADERS, "Accept": "application/dicom+xml"})
    assert r.status_code == 202
    root = ET.fromstring(r.content)
    failed = root.find("DicomAttribute[@keyword='FailedSOPSequence']")
    assert failed is not None
    reasons = [v.text for v in failed.iter("Value") if v.text and v.text.isdigit()]
    assert reasons == [str(0xA900), str(0xC000)]
    with session_scope(settings.database.url) as s:
        assert s.scalar(select(func.count(Instance.id))) == 1


def test_stow_all_failed_and_bad_media_type(settings: Settings) -> None:
    client = _client(settings)
    junk = _multipart([("application/dicom", b"junk")])
    r = client.post("/dicomweb/studies", content=junk, headers=HEADERS)
    assert r.status_code == 409
    assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    r = client.post("/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 415


def test_stow_into_study_refuses_other_study(settings: Settings) -> None:
    other = to_bytes(make_dataset(rows=8, cols=8, study_uid="1.9.2"))
    r = _client(settings).post("/dicomweb/studies/1.9.1", content=_multipart([("application/dicom", other)]),
                               headers=HEADERS)
    assert r.status_code == 409
    ds = pydicom.Dataset.from_json(r.json())
    assert ds.FailedSOPSequence[0].FailureReason == 0xA900
    with session_scope(settings.database.url) as s:
        assert s.scalar(select(func.count(Instance.id))) == 0  # refused before anything was stored
