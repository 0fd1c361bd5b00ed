"""Study assembly after a quiet period; outbox claims are exclusive across workers (PostgreSQL)."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from sqlalchemy import select

from diff3m.config import DeliverySettings, Settings
from diff3m.db.migrate import upgrade
from diff3m.db.models import AuditEvent, DeliveryKind, DeliveryStatus, Study, StudyStatus, utcnow
from diff3m.db.session import session_scope
from diff3m.node import outbox
from diff3m.node.assembly import complete_quiet_studies
from diff3m.node.ingest import ingest_bytes
from tests.dicom_factory import make_dataset, to_bytes


def _send(settings: Settings, study: str, sop: str, view: str | None) -> None:
    ds = make_dataset(rows=8, cols=8, study_uid=study, sop_uid=sop, view_position=view)
    assert ingest_bytes(settings, None, to_bytes(ds)).ok


def test_quiet_studies_queued_or_skipped(settings: Settings) -> None:
    url = settings.database.url
    _send(settings, "1.5.1", "1.5.1.1", "PA")
    _send(settings, "1.5.1", "1.5.1.2", "LL")
    _send(settings, "1.5.2", "1.5.2.1", "LATERAL")
    now = utcnow()
    assert complete_quiet_studies(url, 10, now=now) == []  # not quiet yet
    later = now + timedelta(seconds=11)
    queued = complete_quiet_studies(url, 10, now=later)
    with session_scope(url) as s:
        studies = {st.study_uid: st for st in s.scalars(select(Study))}
        assert queued == [studies["1.5.1"].id]
        assert studies["1.5.1"].status == StudyStatus.QUEUED
        assert studies["1.5.2"].status == StudyStatus.SKIPPED
        skipped = s.scalars(select(AuditEvent).where(AuditEvent.kind == "study_skipped")).one()
        want = [{"sop_instance_uid": "1.5.2.1", "view_position": "LATERAL"}]
        assert skipped.detail["skipped_laterals"] == want
    assert complete_quiet_studies(url, 10, now=later) == []  # idempotent
    # a late frontal image re-opens the skipped study with a new revision, then it is queued
    _send(settings, "1.5.2", "1.5.2.2", "AP")
    with session_scope(url) as s:
        st = s.scalars(select(Study).where(Study.study_uid == "1.5.2")).one()
        assert (st.status, st.revision) == (StudyStatus.RECEIVING, 1)
    assert complete_quiet_studies(url, 0, now=utcnow() + timedelta(seconds=1)) == [st.id]


def test_backoff_grows_and_is_capped() -> None:
    cfg = DeliverySettings(max_attempts=10, backoff_seconds=2, backoff_max_seconds=30)
    rng = random.Random(1)
    for attempts, cap in [(1, 2), (2, 4), (3, 8), (6, 30), (9, 30)]:
        d = outbox.backoff_seconds(attempts, cfg, rng)
        assert cap / 2 <= d <= cap


def test_claims_are_exclusive_on_postgresql(postgres_url: str) -> None:
    upgrade(postgres_url)
    with session_scope(postgres_url) as s:
        for i in range(40):
            outbox.enqueue(s, DeliveryKind.FHIR_OBSERVATION, "fhir", {"n": i}, dedup_key=f"k{i}")

    def worker(_: int) -> list[int]:
        got: list[int] = []
        while True:
            with session_scope(postgres_url) as s:
                batch = outbox.claim_due(s, limit=3)
                if not batch:
                    return got
                got += [d.id for d in batch]
                for d in batch:
                    outbox.mark_done(s, d.id)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(4)))
    claimed = [i for r in results for i in r]
    assert len(claimed) == 40 and len(set(claimed)) == 40
    with session_scope(postgres_url) as s:
        assert {d.status for d in outbox.list_deliveries(s)} == {DeliveryStatus.DONE}


def test_abandoned_claim_is_reclaimed_after_lease(settings: Settings) -> None:
    url = settings.database.url
    with session_scope(url) as s:
        outbox.enqueue(s, DeliveryKind.DICOM, "pacs", {}, dedup_key="x")
        now = utcnow()
        assert len(outbox.claim_due(s, now=now)) == 1
        assert outbox.claim_due(s, now=now + timedelta(seconds=5)) == []
        again = outbox.claim_due(s, now=now + timedelta(seconds=outbox.DEFAULT_LEASE_SECONDS + 1))
        assert len(again) == 1 and again[0].attempts == 2
