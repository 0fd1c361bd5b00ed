"""Group commit: concurrent ingests share commits, every row lands, duplicates stay idempotent."""

from __future__ import annotations

import threading

from pydicom.uid import generate_uid
from sqlalchemy import func, select

from diff3m.config import load_settings
from diff3m.db.models import Instance, Study
from diff3m.db.session import session_scope
from diff3m.node.ingest import ingest_bytes
from tests.dicom_factory import make_dataset, to_bytes


def test_concurrent_ingest_commits_every_row_once(tmp_path, sqlite_url):
    settings = load_settings(None, node={"storage_dir": str(tmp_path / "st"), "min_free_disk_mb": 1},
                             database={"url": sqlite_url})
    study = generate_uid()
    blobs = [to_bytes(make_dataset(rows=32, cols=32, study_uid=study, seed=i)) for i in range(48)]
    outcomes: list = []

    def send(chunk: list[bytes]) -> None:
        for b in chunk:
            outcomes.append(ingest_bytes(settings, sqlite_url, b, "MOD"))

    # 8 senders, and every object sent twice (by two different threads) at once
    threads = [threading.Thread(target=send, args=(blobs[i % 4::4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcomes) == 96 and all(o.ok for o in outcomes)
    assert sum(o.duplicate for o in outcomes) == 48
    with session_scope(sqlite_url) as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 48
        assert s.scalar(select(func.count()).select_from(Study)) == 1
    stored = [p for p in (tmp_path / "st").rglob("*.dcm")]
    assert len(stored) == 48 and not list((tmp_path / "st" / "tmp").glob("*"))
