"""Batch-size sweep on an accelerator: studies/s, latency and the fraction of the card's bf16 peak.

For every batch size the default scoring (checkpoint steps and noise level, one frontal image per
study) is timed end to end through ``Diff3MScorer.score_batch``; the UNet passes alone (the sampling
loop on device tensors) are timed separately and their FLOPs, counted once per pass with
``torch.utils.flop_counter``, give the achieved FLOP/s and its fraction of the card's dense bf16 peak.
Run by bench/gpu_check.sh; works on the CPU too (no peak known there unless given).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from diff3m.bench.machine import Machine, machine_info

# dense bf16 tensor-core peaks (TFLOP/s, without sparsity) by device-name fragment, most specific first
BF16_PEAK_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)


@dataclass(frozen=True)
class BatchPoint:
    """One batch size: end-to-end latency and throughput, UNet-only time, FLOPs and peak fraction."""

    batch_size: int
    latency_seconds: float  # one batch through score_batch (preprocess, sampling, maps, scores)
    studies_per_second: float
    unet_seconds: float  # the sampling loop alone for one batch
    unet_passes: int
    flops_per_pass: float  # one network pass for the whole batch
    achieved_tflops: float
    peak_fraction: float | None


@dataclass(frozen=True)
class GpuBench:
    """Result of the sweep."""

    machine: Machine
    checkpoint: str
    compiled: bool
    steps: int
    noise_level: int
    peak_tflops: float | None
    points: list[BatchPoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["machine"] = self.machine.as_dict()
        return out


def peak_for(device_name: str) -> float | None:
    """The dense bf16 peak (TFLOP/s) of a known card, else None."""
    for fragment, peak in BF16_PEAK_TFLOPS:
        if fragment in device_name:
            return peak
    return None


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sweep(
    checkpoint: str,
    batch_sizes: list[int],
    device: str = "auto",
    repeats: int = 3,
    compile_net: bool = False,
    peak_tflops: float | None = None,
    compile_mode: str = "default",
) -> GpuBench:
    """Time the default scoring and its UNet passes for every batch size."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from diff3m.bench.inference import default_passes, synthetic_items
    from diff3m.models.inference import Diff3MScorer
    from diff3m.models.schedule import timestep_grid

    scorer = Diff3MScorer.load(checkpoint, device=device)
    dev = scorer.device
    machine = machine_info(str(dev))
    peak = peak_tflops if peak_tflops else peak_for(machine.gpu) if machine.gpu else None
    net = scorer.network
    if compile_net:
        # "reduce-overhead" replays CUDA graphs: the demo network is launch-bound, not FLOP-bound
        scorer.network = torch.compile(net, mode=compile_mode)  # type: ignore[assignment]
    cfg = scorer.config
    grid = timestep_grid(cfg.noise_level, cfg.steps)
    passes = default_passes(cfg.noise_level, cfg.steps, cfg.encoding, cfg.draws)
    items = synthetic_items(max(batch_sizes))
    points = []
    for b in batch_sizes:
        chunk = items[:b]
        scorer.score_batch(chunk, batch_size=b)  # warm-up (and compilation for this shape)
        lat = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            scorer.score_batch(chunk, batch_size=b)
            _sync(dev)
            lat.append(time.perf_counter() - t0)
        x0 = torch.rand(b, 1, scorer.image_size, scorer.image_size, device=dev)

        def sample(x0: Any = x0, b: int = b) -> Any:  # the checkpoint's own sampling, without EHR
            return scorer.reconstruct(x0, [{}] * b, grid, False, encoding=cfg.encoding, draws=cfg.draws)

        timed, scorer.network = scorer.network, net  # FLOPs of the eager network (a compiled one hides them)
        with FlopCounterMode(display=False) as counter:
            sample()
        scorer.network = timed
        flops = float(counter.get_total_flops()) / passes
        unet = []
        for _ in range(repeats):
            _sync(dev)
            t0 = time.perf_counter()
            sample()
            _sync(dev)
            unet.append(time.perf_counter() - t0)
        u = statistics.median(unet)
        achieved = flops * passes / u / 1e12
        latency = statistics.median(lat)
        points.append(
            BatchPoint(b, latency, b / latency, u, passes, flops, achieved, achieved / peak if peak else None)
        )
        print(
            f"batch {b}: {latency:.3f} s, {b / latency:.1f} studies/s, UNet {achieved:.2f} TFLOP/s",
            file=sys.stderr,
        )
    return GpuBench(machine, checkpoint, compile_net, cfg.steps, cfg.noise_level, peak, points)


def markdown(res: GpuBench) -> str:
    """A RESULTS.md section."""
    peak = f"{res.peak_tflops:g} TFLOP/s bf16 peak" if res.peak_tflops else "no known bf16 peak"
    passes = res.points[0].unet_passes if res.points else "?"
    lines = [
        res.machine.heading(),
        "",
        f"`{res.checkpoint}`, its default sampling ({passes} passes, {res.steps} steps, noise level "
        f"{res.noise_level}), "
        f"{'torch.compile' if res.compiled else 'eager'}, bf16 autocast on CUDA; {peak}. Latency = one batch "
        "through score_batch; UNet = the sampling loop alone.",
        "",
        "| batch | latency (s) | studies / s | UNet s / batch | GFLOP / pass | UNet TFLOP/s | of peak |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in res.points:
        frac = f"{100 * p.peak_fraction:.1f} %" if p.peak_fraction is not None else "-"
        lines.append(
            f"| {p.batch_size} | {p.latency_seconds:.3f} | {p.studies_per_second:.1f} | "
            f"{p.unet_seconds:.3f} | {p.flops_per_pass / 1e9:.2f} | {p.achieved_tflops:.3f} | {frac} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    """``python -m diff3m.bench.gpu``: print the Markdown, and the JSON on the last line."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default="builtin:demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true", help="torch.compile the network")
    modes = ["default", "reduce-overhead", "max-autotune-no-cudagraphs"]
    ap.add_argument("--compile-mode", default="default", choices=modes, help="torch.compile mode")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the card's bf16 peak")
    args = ap.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    res = sweep(
        args.checkpoint, sizes, args.device, args.repeats, args.compile, args.peak_tflops, args.compile_mode
    )
    print(markdown(res))
    print(json.dumps(res.as_dict(), separators=(",", ":")))


if __name__ == "__main__":
    main()
