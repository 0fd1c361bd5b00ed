"""Ingest benchmark: 200 DX 512x512x16 images of one study, 8 concurrent storescu associations;
images/s of the Diff3M node vs dcmtk ``storescp --fork`` vs Orthanc, same machine, same run.

    .venv/bin/python bench/ingest.py [--images 200] [--assocs 8] [--rounds 2] [--record]

``--record`` appends the result table to bench/RESULTS.md (section "Ingest").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dicom_factory import make_dataset, write_file  # noqa: E402


def free_port() -> int:
    """A TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    """Wait until 127.0.0.1:port accepts connections."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def make_images(folder: Path, n: int, groups: int) -> list[Path]:
    """``n`` DX 512x512x16 files of one study, spread over ``groups`` folders (one per association)."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 65535, (512, 512), dtype=np.uint16)
        ds = make_dataset(pixels=pixels, bits=16, study_uid=study, series_uid=series, view_position="PA")
        write_file(folder / f"g{i % groups}" / f"{i:04d}.dcm", ds)
    return sorted(folder.glob("g*"))


def send_all(port: int, aec: str, groups: list[Path]) -> float:
    """Run one storescu per group concurrently; returns the wall time until all finished."""
    t0 = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", aec, "+sd", "127.0.0.1", str(port),
                               str(g)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for g in groups]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - t0
    bad = [e.decode()[-300:] for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if bad:
        raise RuntimeError(f"storescu failed: {bad[0]}")
    return elapsed


@contextmanager
def diff3m_node(tmp: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """``diff3m scp --processes N`` (SQLite WAL, synchronous=FULL, fsync per file, folder fsync per batch)."""
    port = free_port()
    db = f"sqlite:///{tmp / 'node.sqlite'}"
    cfg = tmp / "node.toml"
    cfg.write_text(f'[node]\nae_title = "DIFF3M"\nhost = "127.0.0.1"\nport = {port}\n'
                   f'storage_dir = "{tmp / "storage"}"\nmin_free_disk_mb = 64\nmax_associations = 16\n'
                   f'[database]\nurl = "{db}"\n')
    cmd = [sys.executable, "-m", "diff3m", "scp", "--config", str(cfg), "--no-assembly",
           "--processes", str(PROCESSES)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)

    def count() -> int:
        import sqlite3

        with sqlite3.connect(tmp / "node.sqlite") as c:
            return int(c.execute("select count(*) from instances").fetchone()[0])

    try:
        wait_port(port)
        yield port, "DIFF3M", count
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def storescp(tmp: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """dcmtk storescp --fork writing every file into one folder (no fsync)."""
    port = free_port()
    out = tmp / "storescp"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "--fork", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port, "STORESCP", lambda: sum(1 for _ in out.iterdir())
    finally:
        proc.terminate()
        proc.wait(20)


@contextmanager
def orthanc(tmp: Path) -> Iterator[tuple[int, str, Callable[[], int]]]:
    """Orthanc with its default SQLite index and file storage."""
    exe = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    port, http = free_port(), free_port()
    cfg = {"Name": "bench", "StorageDirectory": str(tmp / "orthanc"), "IndexDirectory": str(tmp / "orthanc"),
           "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": http, "RemoteAccessAllowed": False,
           "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True,
           "Plugins": []}
    (tmp / "orthanc.json").write_text(json.dumps(cfg))
    proc = subprocess.Popen([exe, str(tmp / "orthanc.json")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def count() -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/statistics", timeout=30) as r:
            return int(json.loads(r.read())["CountInstances"])

    try:
        wait_port(http)
        wait_port(port)
        yield port, "ORTHANC", count
    finally:
        proc.terminate()
        proc.wait(30)


PROCESSES = 1

TARGETS = {"diff3m node": diff3m_node, "storescp --fork": storescp, "Orthanc": orthanc}


def main() -> None:
    """Run the benchmark and print (optionally record) the table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--assocs", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--processes", type=int, default=1, help="listener processes of the node")
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    global PROCESSES
    PROCESSES = args.processes
    work = Path(tempfile.mkdtemp(prefix="diff3m-bench-", dir=os.environ.get("BENCH_TMP")))
    try:
        groups = make_images(work / "images", args.images, args.assocs)
        rates: dict[str, list[float]] = {name: [] for name in TARGETS}
        for r in range(args.rounds):
            for name, target in TARGETS.items():
                tmp = work / f"{name.split()[0]}-{r}"
                tmp.mkdir()
                with target(tmp) as (port, aec, count):
                    elapsed = send_all(port, aec, groups)
                    stored = count()
                if stored != args.images:
                    raise RuntimeError(f"{name}: {stored} of {args.images} stored")
                rates[name].append(args.images / elapsed)
                print(f"round {r + 1}: {name}: {args.images / elapsed:.1f} images/s", flush=True)
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in rates.items()}
    node = best["diff3m node"]
    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.machine()}, Python {platform.python_version()})",
        "",
        f"{args.images} DX 512x512x16 (explicit VR LE, 512 KiB each), one study, {args.assocs} concurrent "
        f"storescu associations; node with `--processes {args.processes}`; best of {args.rounds} rounds "
        "(all rounds: "
        + "; ".join(f"{k} {', '.join(f'{x:.0f}' for x in v)}" for k, v in rates.items()) + ").",
        "",
        "| receiver | images/s | node / receiver |",
        "|---|---:|---:|",
    ]
    for k, v in best.items():
        lines.append(f"| {k} | {v:.1f} | {node / v:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.record:
        results = ROOT / "bench" / "RESULTS.md"
        existing = results.read_text() if results.exists() else "# Benchmark results\n"
        if "## Ingest" not in existing:
            existing = existing.rstrip("\n") + "\n\n## Ingest\n\n" + INGEST_NOTES
        head, _, tail = existing.partition("## Ingest\n")
        body, sep, rest = tail.partition("\n## ")
        after = sep + rest if sep else ""
        results.write_text(head + "## Ingest\n" + body.rstrip("\n") + "\n\n" + text + after)


INGEST_NOTES = """`bench/ingest.py`. The node keeps full durability on every image: temp file, fsync, rename,
fsync of the folder, then the SQLite (WAL, synchronous=FULL) commit, and only then C-STORE Success.
storescp writes without fsync; Orthanc writes its file and SQLite index with its defaults.
The machine is shared with other jobs (several engineers), so absolute numbers vary run to run;
the three receivers are measured in the same run, interleaved, for a fair ratio.
"""


if __name__ == "__main__":
    main()
