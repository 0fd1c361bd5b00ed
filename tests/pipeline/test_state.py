"""Study state transitions: claims are exclusive, stale work is a no-op, deliveries settle studies."""

from __future__ import annotations

from datetime import timedelta

import pytest

from diff3m.db.models import Delivery, DeliveryKind, DeliveryStatus, Study, StudyStatus
from diff3m.db.session import session_scope
from diff3m.pipeline import state


def _study(url: str, status: StudyStatus = StudyStatus.INFERRING, revision: int = 0) -> int:
    with session_scope(url) as s:
        st = Study(study_uid="1.2.3.4", status=status, revision=revision)
        s.add(st)
        s.flush()
        return st.id


@pytest.mark.parametrize("db", ["sqlite_url", "postgres_url"])
def test_claim_is_exclusive_until_lease_expires(db, request):
    url = request.getfixturevalue(db)
    sid = _study(url)
    with session_scope(url) as s:
        assert state.claim(s, sid, 0, (StudyStatus.INFERRING,), timedelta(minutes=5))
        assert not state.claim(s, sid, 0, (StudyStatus.INFERRING,), timedelta(minutes=5))
        assert not state.claim(s, sid, 1, (StudyStatus.INFERRING,), timedelta(0))  # stale revision
        assert not state.claim(s, sid, 0, (StudyStatus.BUILDING,), timedelta(0))  # wrong stage
        assert state.claim(s, sid, 0, (StudyStatus.INFERRING,), timedelta(0))  # expired lease


def test_dead_local_claims_are_released(sqlite_url):
    sid = _study(sqlite_url)
    with session_scope(sqlite_url) as s:
        st = s.get(Study, sid)
        st.claimed_by = f"{state.worker_id().split(':')[0]}:999999999:1"  # no such pid
    with session_scope(sqlite_url) as s:
        assert state.release_dead_claims(s) == 1
        assert state.claim(s, sid, 0, (StudyStatus.INFERRING,), timedelta(hours=1))
        assert state.release_dead_claims(s) == 0  # our own live claim stays


def test_advance_records_timings_and_total(sqlite_url):
    sid = _study(sqlite_url, StudyStatus.BUILDING)
    with session_scope(sqlite_url) as s:
        st = s.get(Study, sid)
        st.completed_at = st.created_at
        state.advance(s, st, StudyStatus.DONE, "build", 1.23456)
        assert st.timings["build"] == 1.235 and st.timings["total"] >= 0
        assert st.finished_at is not None and st.claimed_by is None


def test_settle_deliveries(sqlite_url):
    sid = _study(sqlite_url, StudyStatus.DELIVERING)
    with session_scope(sqlite_url) as s:
        for i, status in enumerate((DeliveryStatus.DONE, DeliveryStatus.PENDING)):
            s.add(Delivery(dedup_key=f"k{i}", study_id=sid, kind=DeliveryKind.DICOM, destination="pacs",
                           status=status))
    with session_scope(sqlite_url) as s:
        st = s.get(Study, sid)
        state.settle_deliveries(s, st)
        assert st.status == StudyStatus.DELIVERING
        d = s.query(Delivery).filter_by(dedup_key="k1").one()
        d.status, d.last_error = DeliveryStatus.DEAD, "association rejected"
        s.flush()
        state.settle_deliveries(s, st)
        assert st.status == StudyStatus.FAILED and "association rejected" in st.error
        st.status = StudyStatus.DELIVERING
        d.status = DeliveryStatus.DONE
        s.flush()
        state.settle_deliveries(s, st)
        assert st.status == StudyStatus.DONE and st.error is None


def test_stuck_lists_unfinished_only(sqlite_url):
    _study(sqlite_url, StudyStatus.INFERRING)
    with session_scope(sqlite_url) as s:
        s.add(Study(study_uid="9.9", status=StudyStatus.DONE))
    with session_scope(sqlite_url) as s:
        rows = state.stuck(s, timedelta(0))
    assert [r[2] for r in rows] == [StudyStatus.INFERRING]
