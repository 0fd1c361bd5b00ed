"""Ingest benchmark: images/s of the Diff3M node vs dcmtk storescp --fork vs Orthanc, same images, same run.

The receivers, the image set and the senders are those of the DICOM node's script ``bench/ingest.py``
(200 DX 512x512x16 of one study, 8 concurrent storescu associations by default); this module runs
them in interleaved rounds and returns a typed result (JSON with ``--json``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from diff3m.bench.machine import Machine, machine_info

SCRIPT = Path(__file__).resolve().parent.parent.parent / "bench" / "ingest.py"


@dataclass(frozen=True)
class ReceiverRate:
    """Images per second of one receiver (best round and every round) and the node's ratio to it."""

    receiver: str
    images_per_second: float
    rounds: list[float]
    node_ratio: float  # node images/s divided by this receiver's


@dataclass(frozen=True)
class IngestBench:
    """Result of ``diff3m bench ingest``."""

    machine: Machine
    images: int
    associations: int
    node_processes: int
    rounds: int
    receivers: list[ReceiverRate] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the node's ratios to storescp and Orthanc at the top level."""
        out = asdict(self)
        out["machine"] = self.machine.as_dict()
        for r in self.receivers:
            out[f"{r.receiver.split()[0].lower()}_images_per_second"] = r.images_per_second
            out[f"node_vs_{r.receiver.split()[0].lower()}"] = r.node_ratio
        return out


def _script() -> ModuleType:
    if not SCRIPT.is_file():
        raise RuntimeError(f"{SCRIPT} is missing (the DICOM node's ingest benchmark)")
    root = str(SCRIPT.parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location("diff3m_bench_ingest_script", SCRIPT)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {SCRIPT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(images: int = 200, associations: int = 8, rounds: int = 2, processes: int = 1) -> IngestBench:
    """Send the same images to every receiver in turn, ``rounds`` times; best round per receiver."""
    if min(images, associations, rounds, processes) < 1:
        raise ValueError("images, associations, rounds and processes must be at least 1")
    mod = _script()
    setattr(mod, "PROCESSES", processes)  # noqa: B010 - the script reads this module global
    machine = machine_info("cpu")
    work = Path(tempfile.mkdtemp(prefix="diff3m-ingest-", dir=os.environ.get("BENCH_TMP")))
    rates: dict[str, list[float]] = {name: [] for name in mod.TARGETS}
    try:
        groups = mod.make_images(work / "images", images, associations)
        for r in range(rounds):
            for name, target in mod.TARGETS.items():
                tmp = work / f"{name.split()[0]}-{r}"
                tmp.mkdir()
                with target(tmp) as (port, aec, count):
                    elapsed = mod.send_all(port, aec, groups)
                    stored = count()
                if stored != images:
                    raise RuntimeError(f"{name}: {stored} of {images} images stored")
                rates[name].append(images / elapsed)
                print(f"round {r + 1}: {name}: {images / elapsed:.1f} images/s", file=sys.stderr, flush=True)
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    node_name = next(iter(rates))
    node = max(rates[node_name])
    receivers = [ReceiverRate(k, max(v), v, node / max(v)) for k, v in rates.items()]
    return IngestBench(machine, images, associations, processes, rounds, receivers)


def markdown(res: IngestBench) -> str:
    """A RESULTS.md section."""
    lines = [
        res.machine.heading(),
        "",
        f"{res.images} DX 512x512x16, one study, {res.associations} concurrent storescu associations; node "
        f"with `--processes {res.node_processes}`; best of {res.rounds} interleaved rounds (all rounds: "
        + "; ".join(f"{r.receiver} {', '.join(f'{x:.0f}' for x in r.rounds)}" for r in res.receivers)
        + ").",
        "",
        "| receiver | images/s | node / receiver |",
        "|---|---:|---:|",
    ]
    lines += [f"| {r.receiver} | {r.images_per_second:.1f} | {r.node_ratio:.2f}x |" for r in res.receivers]
    return "\n".join(lines) + "\n"
