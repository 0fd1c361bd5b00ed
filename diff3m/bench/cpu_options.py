"""CPU options benchmark: seconds per network pass under thread count, OpenMP wait policy and memory format.

Each variant runs in its own Python process (the OpenMP wait policy is read when torch loads), the
variants take turns over several rounds so that load from other jobs hits them alike, and the median
per variant is compared with the baseline (torch's defaults). Weights do not change the cost, so an
untrained network of the profile is timed unless a checkpoint is given.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from diff3m.bench.machine import Machine, machine_info


@dataclass(frozen=True)
class Variant:
    """One combination of CPU settings."""

    name: str
    threads: int = 0  # 0: torch's default (one per core)
    passive: bool = False  # OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning)
    channels_last: bool = False


VARIANTS = {
    "baseline": Variant("baseline (torch defaults)"),
    "passive": Variant("OMP_WAIT_POLICY=PASSIVE", passive=True),
    "1thread": Variant("1 thread", threads=1),
    "cl": Variant("channels-last", channels_last=True),
    "cl-passive": Variant("channels-last + PASSIVE", passive=True, channels_last=True),
    "cl-1thread": Variant("channels-last + 1 thread", threads=1, channels_last=True),
}


@dataclass(frozen=True)
class VariantResult:
    """Median seconds per image per pass of one variant, and its ratio to the baseline."""

    variant: Variant
    seconds_per_pass: float
    runs: list[float]
    speedup_vs_baseline: float
    max_abs_diff: float  # largest output difference from the contiguous layout (numerics check)


@dataclass(frozen=True)
class CpuOptionsBench:
    """Result of ``diff3m bench cpu-options``."""

    machine: Machine
    source: str
    batch_size: int
    rounds: int
    results: list[VariantResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["machine"] = self.machine.as_dict()
        return out


def _network(source: str) -> Any:
    """(network, image size, EHR condition inputs) from a profile name or a checkpoint."""
    import torch

    from diff3m.models.profiles import PROFILES

    if source in PROFILES:
        from diff3m.models.ehr import EhrEncoder
        from diff3m.models.network import Diff3MNet

        p = PROFILES[source]
        enc = EhrEncoder().fit([{"age": 50.0}])
        torch.manual_seed(0)
        return Diff3MNet(p, enc.n_tokens, enc.group_indices()).eval(), p.image_size, enc
    from diff3m.models import checkpoint

    loaded = checkpoint.load(source, "cpu")
    return loaded.network.eval(), loaded.config.profile.image_size, loaded.config.ehr


def child(source: str, batch: int, repeats: int, threads: int, channels_last: bool) -> dict[str, float]:
    """Measure in this process: median seconds per image per pass, and the layout's numeric difference."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    net, size, enc = _network(source)
    v, pr = (torch.from_numpy(a) for a in enc.encode_batch([{"age": 60.0, "sex": "F"}] * batch))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, size, size, generator=gen)
    t = torch.full((batch,), 200, dtype=torch.long)
    with torch.inference_mode():
        cond = net.condition(x, v, pr)
        ref, _ = net(x, t, cond)
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        out, _ = net(x, t, cond)  # warm-up
        diff = float((out - ref).abs().max())
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            net(x, t, cond)
            runs.append((time.perf_counter() - t0) / batch)
    return {"seconds_per_pass": statistics.median(runs), "max_abs_diff": diff}


def _run_variant(v: Variant, source: str, batch: int, repeats: int) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if v.passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    cmd = [
        sys.executable,
        "-m",
        "diff3m.bench.cpu_options",
        source,
        str(batch),
        str(repeats),
        str(v.threads),
        "1" if v.channels_last else "0",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"variant {v.name!r} failed: {proc.stderr[-1500:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def run(
    source: str = "demo",
    batch: int = 1,
    rounds: int = 3,
    repeats: int = 3,
    only: list[str] | None = None,
) -> CpuOptionsBench:
    """Time the variants (``only`` these, baseline first) in turns over ``rounds``; medians vs baseline."""
    keys = ["baseline"] + [k for k in (only or VARIANTS) if k != "baseline"]
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    variants = [VARIANTS[k] for k in keys]
    runs: dict[str, list[float]] = {v.name: [] for v in variants}
    diffs: dict[str, float] = {}
    machine = machine_info("cpu")
    for r in range(rounds):
        for v in variants:
            res = _run_variant(v, source, batch, repeats)
            runs[v.name].append(res["seconds_per_pass"])
            diffs[v.name] = max(diffs.get(v.name, 0.0), res["max_abs_diff"])
            print(
                f"round {r + 1}/{rounds}: {v.name}: {res['seconds_per_pass']:.3f} s/pass",
                file=sys.stderr,
                flush=True,
            )
    base = statistics.median(runs[variants[0].name])
    results = [
        VariantResult(
            v,
            statistics.median(runs[v.name]),
            runs[v.name],
            base / statistics.median(runs[v.name]),
            diffs[v.name],
        )
        for v in variants
    ]
    return CpuOptionsBench(machine, source, batch, rounds, results)


def markdown(res: CpuOptionsBench) -> str:
    """A RESULTS.md section."""
    lines = [
        res.machine.heading(),
        "",
        f"Network `{res.source}`, batch {res.batch_size}, one forward pass (eps UNet + both masked "
        f"encoders + shared decoder); each variant in its own process, median of {res.rounds} "
        "interleaved rounds.",
        "",
        "| variant | s / image / pass | vs baseline | max abs output diff |",
        "|---|---:|---:|---:|",
    ]
    for r in res.results:
        lines.append(
            f"| {r.variant.name} | {r.seconds_per_pass:.3f} | {r.speedup_vs_baseline:.2f}x | "
            f"{r.max_abs_diff:.1e} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    _src, _batch, _rep, _thr, _cl = sys.argv[1:6]
    print(json.dumps(child(_src, int(_batch), int(_rep), int(_thr), _cl == "1")))
