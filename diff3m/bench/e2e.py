"""End-to-end benchmark: `diff3m serve` from study complete to SR stored at the PACS (Orthanc).

For each model batch size a fresh node is started (SQLite, local durable queue, the configured
checkpoint on the CPU) with Orthanc as its results destination. A warm-up study is pushed and
waited for, then (on the first node) single studies one at a time for the turnaround, then a burst
of queued studies for the throughput. "Complete" is the node's own ``completed_at`` (after
``study_quiet_seconds`` without new instances); "stored" is the moment a poll of Orthanc (every
``POLL_SECONDS``) first lists an SR series in the study, so turnarounds carry up to one poll of slack.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diff3m.bench.machine import Machine, machine_info
from diff3m.bench.peers import Orthanc, free_port, orthanc, stop, wait_port
from diff3m.bench.studies import write_studies

POLL_SECONDS = 0.2
QUIET_SECONDS = 1.0
STALL_SECONDS = 240.0  # no new SR for this long: the node is stuck, not slow


@dataclass(frozen=True)
class StudyTiming:
    """One study: when the node called it complete and when its SR was first seen at the PACS."""

    study_uid: str
    completed_at: float  # epoch seconds
    sr_stored_at: float
    turnaround_seconds: float
    stages: dict[str, float]  # the node's own per-stage seconds (Study.timings)


@dataclass(frozen=True)
class QueueRun:
    """A burst of studies queued at once on a node with one model batch size."""

    batch_size: int
    studies: int
    seconds: float  # first completion -> last SR stored
    studies_per_minute: float
    mean_turnaround_seconds: float
    max_turnaround_seconds: float


@dataclass(frozen=True)
class E2EBench:
    """Result of ``diff3m bench e2e``."""

    machine: Machine
    checkpoint: str
    image_rows: int
    image_cols: int
    quiet_seconds: float
    single: list[StudyTiming] = field(default_factory=list)
    single_median_seconds: float = 0.0
    queue: list[QueueRun] = field(default_factory=list)
    batching_gain: dict[str, float] = field(default_factory=dict)  # batch size -> studies/min vs the first

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["machine"] = self.machine.as_dict()
        return out


@dataclass
class _Node:
    root: Path
    port: int
    db: Path
    proc: subprocess.Popen[bytes]
    log: Path


def _config(root: Path, checkpoint: str, pacs: Orthanc, batch_size: int, device: str) -> tuple[Path, int]:
    port, web = free_port(), free_port()
    lines = [
        "[node]", 'ae_title = "DIFF3M"', 'host = "127.0.0.1"', f"port = {port}",
        f'storage_dir = "{root / "storage"}"', f"study_quiet_seconds = {QUIET_SECONDS}",
        "min_free_disk_mb = 1",
        "[database]", f'url = "sqlite:///{root / "node.sqlite"}"',
        "[queue]", f'broker_url = "sqla+sqlite:///{root / "queue.sqlite"}"',
        "[model]", f"checkpoint = {json.dumps(checkpoint)}", f'device = "{device}"',
        f"batch_size = {batch_size}",
        "[web]", 'host = "127.0.0.1"', f"port = {web}",
        "[fhir]", 'base_url = ""',
        "[[destinations]]", 'name = "pacs"', f'ae_title = "{pacs.aet}"', 'host = "127.0.0.1"',
        f"port = {pacs.dicom_port}",
        "[[routing]]", 'name = "ai-results"', 'send = ["results"]', 'to = "pacs"',
    ]  # fmt: skip
    path = root / "node.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, port


@contextmanager
def _node(root: Path, checkpoint: str, pacs: Orthanc, batch_size: int, device: str) -> Iterator[_Node]:
    root.mkdir(parents=True, exist_ok=True)
    cfg, port = _config(root, checkpoint, pacs, batch_size, device)
    log = root / "serve.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "diff3m", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        wait_port(port, 180, proc)
        yield _Node(root, port, root / "node.sqlite", proc, log)
    finally:
        stop(proc)


def _send(port: int, files: list[Path]) -> None:
    exe = shutil.which("storescu")
    if not exe:
        raise RuntimeError("dcmtk's storescu is not installed")
    proc = subprocess.run(
        [exe, "-aet", "BENCH", "-aec", "DIFF3M", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed: {(proc.stdout + proc.stderr)[-800:]}")


def _node_rows(db: Path) -> dict[str, tuple[str, float | None, dict[str, float]]]:
    with sqlite3.connect(db) as c:
        rows = c.execute("select study_uid, status, completed_at, timings from studies").fetchall()
    out: dict[str, tuple[str, float | None, dict[str, float]]] = {}
    for uid, status, completed, timings in rows:
        when = None
        if completed:
            dt = datetime.fromisoformat(str(completed))
            when = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
        out[str(uid)] = (
            str(status),
            when,
            json.loads(timings) if isinstance(timings, str) else (timings or {}),
        )
    return out


def _stuck(node: _Node, missing: set[str]) -> str:
    with sqlite3.connect(node.db) as c:
        rows = c.execute("select study_uid, status, claimed_by, claimed_at from studies").fetchall()
    return "; ".join(
        f"{uid[-12:]}: {st}, claimed by {by} at {at}" for uid, st, by, at in rows if uid in missing
    )


def _wait_sr(
    node: _Node, pacs: Orthanc, uids: list[str], timeout: float, stall: float = STALL_SECONDS
) -> dict[str, float]:
    """Poll Orthanc until every study has an SR; the first time each was seen (epoch seconds).

    Fails after ``timeout`` overall, or when no new SR arrived for ``stall`` seconds, naming the
    studies still missing with their state in the node's database.
    """
    seen: dict[str, float] = {}
    parents: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    progress = time.monotonic()
    wanted = set(uids)
    while wanted - set(seen):
        now_m = time.monotonic()
        if now_m > deadline or now_m - progress > stall or node.proc.poll() is not None:
            missing = wanted - set(seen)
            why = "node exited" if node.proc.poll() is not None else f"no new SR for {now_m - progress:.0f} s"
            raise RuntimeError(
                f"{len(missing)} of {len(wanted)} studies without SR at the PACS ({why}): "
                f"{_stuck(node, missing)}"
                f"\n--- serve log tail ---\n{node.log.read_text(errors='replace')[-2000:]}"
            )
        now = time.time()
        series = pacs.post("/tools/find", {"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True})
        for s in series:
            sid = s["ParentStudy"]
            if sid not in parents:
                parents[sid] = str(pacs.get(f"/studies/{sid}")["MainDicomTags"]["StudyInstanceUID"])
            uid = parents[sid]
            if uid in wanted and uid not in seen:
                seen[uid] = now
                progress = time.monotonic()
        time.sleep(POLL_SECONDS)
    return seen


def _timings(node: _Node, seen: dict[str, float]) -> list[StudyTiming]:
    rows = _node_rows(node.db)
    out = []
    for uid, stored in seen.items():
        _, completed, stages = rows[uid]
        if completed is None:
            raise RuntimeError(f"study {uid} has an SR but no completed_at in the node's database")
        out.append(StudyTiming(uid, completed, stored, stored - completed, stages))
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run(
    checkpoint: str = "builtin:demo",
    single: int = 3,
    queued: int = 20,
    batch_sizes: tuple[int, ...] = (1, 4, 8),
    rows: int = 2048,
    cols: int = 1792,
    device: str = "cpu",
    study_timeout: float = 300,
    workdir: Path | None = None,
) -> E2EBench:
    """Measure single-study turnaround and queued throughput per model batch size."""
    if not batch_sizes or min(batch_sizes) < 1 or single < 0 or queued < 1:
        raise ValueError("need at least one batch size >= 1 and at least one queued study")
    base = Path(tempfile.mkdtemp(prefix="diff3m-e2e-", dir=workdir))
    machine = machine_info(device)
    try:
        studies = write_studies(base / "studies", 1 + single + queued * len(batch_sizes), rows, cols)
        singles: list[StudyTiming] = []
        queue: list[QueueRun] = []
        nxt = 0
        with orthanc(base / "orthanc") as pacs:
            for i, bs in enumerate(batch_sizes):
                with _node(base / f"node-bs{bs}", checkpoint, pacs, bs, device) as node:
                    warm = [studies[nxt]] if i == 0 else []
                    nxt += len(warm)
                    if warm:  # the first study also pays for loading the model
                        _send(node.port, [warm[0][1]])
                        _wait_sr(node, pacs, [warm[0][0]], study_timeout * 2)
                    if i == 0:
                        for uid, path in studies[nxt : nxt + single]:
                            _send(node.port, [path])
                            singles += _timings(node, _wait_sr(node, pacs, [uid], study_timeout))
                            _log(f"single study: {singles[-1].turnaround_seconds:.1f} s")
                        nxt += single
                    burst = studies[nxt : nxt + queued]
                    nxt += queued
                    _send(node.port, [p for _, p in burst])
                    got = _timings(node, _wait_sr(node, pacs, [u for u, _ in burst], study_timeout * queued))
                    span = max(t.sr_stored_at for t in got) - min(t.completed_at for t in got)
                    turns = [t.turnaround_seconds for t in got]
                    queue.append(
                        QueueRun(bs, len(got), span, 60 * len(got) / span, statistics.mean(turns), max(turns))
                    )
                    _log(
                        f"batch {bs}: {len(got)} studies in {span:.1f} s = "
                        f"{queue[-1].studies_per_minute:.1f}/min"
                    )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    first = queue[0].studies_per_minute
    return E2EBench(
        machine=machine,
        checkpoint=checkpoint,
        image_rows=rows,
        image_cols=cols,
        quiet_seconds=QUIET_SECONDS,
        single=singles,
        single_median_seconds=statistics.median([t.turnaround_seconds for t in singles]) if singles else 0.0,
        queue=queue,
        batching_gain={str(q.batch_size): q.studies_per_minute / first for q in queue},
    )


def markdown(res: E2EBench) -> str:
    """A RESULTS.md section."""
    lines = [
        res.machine.heading(),
        "",
        f"`diff3m serve` (SQLite, local queue, `{res.checkpoint}` on {res.machine.device}), Orthanc as the "
        f"PACS; one PA DX {res.image_rows}x{res.image_cols}x16 per study, study_quiet_seconds "
        f"{res.quiet_seconds:g}. Turnaround = SR first seen at Orthanc (polled every {POLL_SECONDS:g} s) "
        "minus the node's completed_at.",
        "",
    ]
    if res.single:
        stages = sorted({k for t in res.single for k in t.stages})
        lines += [
            f"Single study, one at a time: **median {res.single_median_seconds:.1f} s** "
            f"(runs: {', '.join(f'{t.turnaround_seconds:.1f}' for t in res.single)}); "
            "the node's stage seconds "
            "(median): "
            + ", ".join(
                f"{k} {statistics.median([t.stages.get(k, 0.0) for t in res.single]):.2f}" for k in stages
            )
            + ".",
            "",
        ]
    lines += [
        "| model batch size | studies queued | seconds | studies / min | gain | mean / max turnaround (s) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for q in res.queue:
        lines.append(
            f"| {q.batch_size} | {q.studies} | {q.seconds:.1f} | {q.studies_per_minute:.1f} | "
            f"{res.batching_gain[str(q.batch_size)]:.2f}x | {q.mean_turnaround_seconds:.1f} / "
            f"{q.max_turnaround_seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"
