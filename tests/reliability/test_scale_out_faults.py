"""Faults in the scale-out node (`diff3m scp` + `web` + `worker` on PostgreSQL + Redis, Orthanc as PACS):
worker kill -9 during inference, Redis restart, PostgreSQL and the PACS unreachable, a broken FHIR
server; then no PatientName or birth date in any log line the node wrote."""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from diff3m.db.migrate import upgrade
from diff3m.db.models import InferenceResult, Instance, Study
from diff3m.db.session import session_scope
from tests import dicom_factory, services
from tests.e2e.conftest import get_json, wait_study, write_config
from tests.e2e.test_serve import SC_CLASS, SR_CLASS, _classes_in_study
from tests.reliability.conftest import (
    BadFhir,
    NodeProcs,
    RedisProc,
    TcpProxy,
    phi_hits,
    phi_patient,
    rng,
    rounds,
    send_datasets,
)

pytestmark = pytest.mark.slow

INFER_STEPS = 8  # DDIM steps: about a second of tiny-model inference on this CPU, a window to kill in


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` until true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


@dataclass
class StudyState:
    """A study's row as the test sees it (read straight from PostgreSQL, not through the proxy)."""

    status: str
    claimed: bool
    has_result: bool
    instances: int


@dataclass
class Cluster:
    """One scale-out node and the peers the tests break."""

    nodes: NodeProcs
    orthanc: services.Orthanc
    pacs: TcpProxy
    pg: TcpProxy
    redis: RedisProc
    fhir: BadFhir
    db_url: str
    worker_storage: Path
    sent: list[str]

    def start_worker(self, **env: str) -> None:
        """`diff3m worker` with its own storage root (it fetches sources through WADO-RS)."""
        self.nodes.start("worker", env={"DIFF3M_NODE__STORAGE_DIR": str(self.worker_storage), **env})

    def datasets(self, n: int = 1, rows: int = 64) -> list[Dataset]:
        """``n`` frontal images of one new study of the distinctive patient."""
        study = pydicom.uid.generate_uid()
        return [dicom_factory.make_dataset(rows=rows, cols=rows, view_position="PA", study_uid=study,
                                           patient=phi_patient(), seed=i) for i in range(n)]

    def send_study(self, n: int = 1) -> str:
        """Send a new study; every instance must be acknowledged with Success."""
        dss = self.datasets(n)
        report = send_datasets(self.nodes.cfg.dicom_port, dss)
        assert len(report.succeeded) == n, report
        uid = str(dss[0].StudyInstanceUID)
        self.sent.append(uid)
        return uid

    def state(self, uid: str) -> StudyState | None:
        """The study's current row (None before its first instance is committed)."""
        with session_scope(self.db_url) as s:
            study = s.scalar(select(Study).where(Study.study_uid == uid))
            if study is None:
                return None
            result = s.scalar(select(InferenceResult.id).where(InferenceResult.study_id == study.id,
                                                              InferenceResult.revision == study.revision))
            n = len(s.scalars(select(Instance.id).where(Instance.study_id == study.id)).all())
            return StudyState(str(study.status), study.claimed_by is not None, result is not None, n)

    def wait_done(self, uid: str, timeout: float = 180) -> dict:
        """Wait for the study to be DONE (the worker log in the failure message)."""
        return wait_study(self.nodes.cfg, uid, timeout=timeout, log=self.nodes.log("worker"))

    def assert_one_sr_one_sc(self, uid: str) -> None:
        """Exactly one SR and one heatmap SC of the study at the PACS."""
        assert _classes_in_study(self.orthanc, uid) == sorted([SR_CLASS, SC_CLASS])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str,
            tiny_checkpoint: Path) -> Iterator[Cluster]:
    """scp + web + worker on a fresh PostgreSQL database (through a proxy), a Redis of our own, an
    Orthanc PACS (through a proxy) and a FHIR server that never answers properly."""
    root = tmp_path_factory.mktemp("scale-out-faults")
    direct_url = services.create_database(postgres_server_url)
    upgrade(direct_url)
    server = urllib.parse.urlsplit(postgres_server_url)
    pg = TcpProxy(server.port or 5432)
    proxied_url = f"postgresql://{server.username}@127.0.0.1:{pg.port}/{direct_url.rsplit('/', 1)[1]}"
    redis = RedisProc()
    fhir = BadFhir(stall=4.0)
    with services.orthanc_server() as orthanc:
        pacs = TcpProxy(orthanc.dicom_port)
        cfg = write_config(
            root / "node", checkpoint=str(tiny_checkpoint), database_url=proxied_url, broker_url=redis.url,
            fhir_url=fhir.url,
            destinations=[{"name": "pacs", "ae_title": orthanc.aet, "host": "127.0.0.1", "port": pacs.port}],
            routing=[{"name": "ai", "send": "results", "to": "pacs"}],
            extra="[delivery]\nmax_attempts = 200\nbackoff_seconds = 0.5\nbackoff_max_seconds = 2\n",
        )
        env = {
            "DIFF3M_QUEUE__REQUEUE_AFTER_SECONDS": "5", "DIFF3M_MODEL__STEPS": str(INFER_STEPS),
            "DIFF3M_FHIR__TIMEOUT_SECONDS": "1", "DIFF3M_FHIR__MAX_RETRIES": "0",
            "DIFF3M_FHIR__WRITE_OBSERVATIONS": "false", "DIFF3M_FHIR__TRIAGE": "false",
        }
        nodes = NodeProcs(cfg, env)
        c = Cluster(nodes, orthanc, pacs, pg, redis, fhir, direct_url, root / "worker-storage", [])
        try:
            nodes.start("scp", wait_port=cfg.dicom_port)
            nodes.start("web", wait_port=cfg.web_port)
            c.start_worker()
            yield c
        finally:
            nodes.stop_all()
            pacs.close()
            pg.close()
            redis.close()
            fhir.close()
            from diff3m.db.session import dispose_all

            dispose_all()
            services.drop_database(direct_url)


@pytest.mark.timeout(300 + 90 * rounds(2))
def test_worker_kill9_during_inference(cluster: Cluster) -> None:
    r = rng()
    n = rounds(2)
    in_inference = 0
    # a long inference (many DDIM steps) so the random kill moment falls inside it on a fast machine too
    slow = {"DIFF3M_MODEL__NOISE_LEVEL": "400", "DIFF3M_MODEL__STEPS": "150"}
    cluster.nodes.kill9("worker")
    cluster.start_worker(**slow)
    for _ in range(n):
        uid = cluster.send_study()

        def inferring(uid: str = uid) -> bool:
            st = cluster.state(uid)
            return st is not None and st.status == "inferring" and st.claimed

        wait_for(inferring, 180, f"study {uid} in inference")
        time.sleep(r.uniform(0.0, 0.6))
        cluster.nodes.kill9("worker")
        st = cluster.state(uid)
        assert st is not None
        if st.status == "inferring" and not st.has_result:
            in_inference += 1
        cluster.start_worker(**slow)
    for uid in cluster.sent[-n:]:
        cluster.wait_done(uid)
        cluster.assert_one_sr_one_sc(uid)
    cluster.nodes.kill9("worker")  # the tests after this one get the usual fast worker
    cluster.start_worker()
    print(f"worker kill -9: {n} rounds, {in_inference} while inferring; all done, one SR + one SC each")
    assert in_inference >= 1, "no kill landed during inference: the window is too short to test anything"


def test_redis_restart_mid_flight(cluster: Cluster) -> None:
    uids = [cluster.send_study() for _ in range(2)]

    def in_pipeline() -> bool:
        states = [cluster.state(u) for u in uids]
        return any(s is not None and s.status not in ("receiving",) for s in states)

    wait_for(in_pipeline, 60, "a study in the pipeline")
    cluster.redis.kill9()  # every queued and unacknowledged message is lost
    late = cluster.send_study()  # ingest does not need the broker
    time.sleep(1.0)
    cluster.redis.start()
    for uid in [*uids, late]:
        cluster.wait_done(uid)
        cluster.assert_one_sr_one_sc(uid)


def test_postgres_unreachable_mid_flight(cluster: Cluster) -> None:
    first = cluster.send_study()
    wait_for(lambda: (st := cluster.state(first)) is not None and st.status != "receiving", 60,
             "the first study in the pipeline")
    cluster.pg.down()
    try:
        dss = cluster.datasets(3)
        during = send_datasets(cluster.nodes.cfg.dicom_port, dss)
        # nothing may be acknowledged that is not in the database: every answer is a failure
        assert during.statuses and not during.succeeded, during
        assert set(during.statuses.values()) == {0xA700}, during
        time.sleep(2.0)
    finally:
        cluster.pg.up()
    after = send_datasets(cluster.nodes.cfg.dicom_port, dss)
    assert len(after.succeeded) == 3, after
    second = str(dss[0].StudyInstanceUID)
    cluster.sent.append(second)
    for uid in (first, second):
        cluster.wait_done(uid)
        cluster.assert_one_sr_one_sc(uid)
    st = cluster.state(second)
    assert st is not None and st.instances == 3


def test_pacs_down_then_back_delivers_once(cluster: Cluster) -> None:
    cluster.pacs.down()
    try:
        uids = [cluster.send_study() for _ in range(2)]

        def failed_attempts() -> bool:
            from diff3m.db.models import Delivery

            with session_scope(cluster.db_url) as s:
                return all(d.attempts >= 2 and d.last_error for d in s.scalars(
                    select(Delivery).join(Study, Study.id == Delivery.study_id)
                    .where(Study.study_uid.in_(uids))).all()) and len(s.scalars(
                        select(Delivery.id).join(Study, Study.id == Delivery.study_id)
                        .where(Study.study_uid.in_(uids))).all()) == 2

        wait_for(failed_attempts, 180, "deliveries retrying against the unreachable PACS")
        for uid in uids:
            st = cluster.state(uid)
            assert st is not None and st.status == "delivering"
    finally:
        cluster.pacs.up()
    for uid in uids:
        cluster.wait_done(uid)
        cluster.assert_one_sr_one_sc(uid)


@pytest.mark.parametrize("mode", ["error", "stall", "garbage"])
def test_broken_fhir_gives_flagged_image_only_results(cluster: Cluster, mode: str) -> None:
    cluster.fhir.mode = mode
    hits = cluster.fhir.hits
    uid = cluster.send_study()
    study = cluster.wait_done(uid)
    assert cluster.fhir.hits > hits, "the FHIR server was never asked"
    ehr = study["ehr"]
    assert ehr["available"] is False and ehr["reason"], ehr
    cluster.assert_one_sr_one_sc(uid)
    # the SR says the result is image-only, and why
    def tags(oid: str) -> dict[str, Any]:
        return cast(dict[str, Any], cluster.orthanc.get(f"/instances/{oid}/simplified-tags"))

    sr_id = next(o for o in cluster.orthanc.instances()
                 if tags(o)["StudyInstanceUID"] == uid and tags(o)["SOPClassUID"] == SR_CLASS)
    text = str(cluster.orthanc.get(f"/instances/{sr_id}/tags?simplify"))
    assert "EHR unavailable" in text and ehr["reason"][:40] in text, text[:2000]


def test_no_phi_in_any_log_line(cluster: Cluster) -> None:
    """Runs last in this module: every study above belonged to the distinctive patient."""
    logs = cluster.nodes.logs()
    assert {p.name for p in logs} >= {"scp.log", "web.log", "worker.log"}
    text = "".join(p.read_text(errors="replace") for p in logs)
    assert cluster.sent and all(uid in text for uid in cluster.sent[:1]) or len(text) > 1000, \
        "the logs are too thin to prove anything"
    assert get_json(f"{cluster.nodes.cfg.web}/api/studies/{cluster.sent[0]}") is not None
    hits = phi_hits(logs)
    assert not hits, "PHI in logs:\n" + "\n".join(hits[:20])
