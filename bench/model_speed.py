"""Model speed: seconds per network forward pass for each profile and seconds per image of the demo profile.

Run: ``.venv/bin/python bench/model_speed.py [--profiles tiny demo paper] [--repeats 3]``.
Weights do not change the cost, so untrained networks are timed (a throwaway demo checkpoint is
written to a temp dir to time the real scoring path). Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from diff3m.models import checkpoint
from diff3m.models.ehr import EhrEncoder
from diff3m.models.inference import Diff3MScorer
from diff3m.models.network import Diff3MNet, count_parameters
from diff3m.models.preprocess import prepare_array
from diff3m.models.profiles import get_profile
from diff3m.models.schedule import ScheduleConfig


def time_forward(name: str, repeats: int, device: torch.device) -> tuple[int, float, float]:
    """(parameters, seconds per forward (eps + gen), seconds for the once-per-image IECA condition)."""
    p = get_profile(name)
    enc = EhrEncoder().fit([{"age": 50.0}])
    torch.manual_seed(0)
    net = Diff3MNet(p, enc.n_tokens, enc.group_indices()).to(device).eval()
    x = torch.rand(1, 1, p.image_size, p.image_size, device=device)
    v, pr = (torch.from_numpy(a).to(device) for a in enc.encode_batch([{"age": 60.0, "sex": "F"}]))
    t = torch.tensor([p.noise_level // 2], device=device)
    fwd, cond_s = [], []
    with torch.inference_mode():
        cond = net.condition(x, v, pr)
        net(x, t, cond)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            cond = net.condition(x, v, pr)
            t1 = time.perf_counter()
            net(x, t, cond)
            t2 = time.perf_counter()
            cond_s.append(t1 - t0)
            fwd.append(t2 - t1)
    return count_parameters(net), statistics.median(fwd), statistics.median(cond_s)


def time_demo_image(batch: int, repeats: int, device: torch.device) -> float:
    """Seconds per image of the demo profile with its default steps, through Diff3MScorer.score_batch."""
    p = get_profile("demo")
    enc = EhrEncoder().fit([{"age": 50.0}])
    net = Diff3MNet(p, enc.n_tokens, enc.group_indices())
    cfg = checkpoint.CheckpointConfig(
        p, enc, ScheduleConfig(p.timesteps, p.beta_start, p.beta_end), p.steps, p.noise_level
    )
    with tempfile.TemporaryDirectory() as tmp:
        scorer = Diff3MScorer.load(checkpoint.save(Path(tmp), net, cfg), device=str(device))
    rng = np.random.default_rng(0)
    items = [(prepare_array(rng.random((512, 480))), {"age": 60.0, "sex": "M"}) for _ in range(batch)]
    scorer.score_batch(items[:1])  # warm-up
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        scorer.score_batch(items, batch_size=batch)
        runs.append((time.perf_counter() - t0) / batch)
    return statistics.median(runs)


def main() -> None:
    """Measure and print the Markdown section."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", nargs="+", default=["tiny", "demo", "paper"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 4], help="demo end-to-end batch sizes")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load = os.getloadavg()[0]
    lines = [
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC - {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {device}, load average at start {load:.1f})",
        "",
        "| profile | grid | parameters | s / forward (eps + gen) | s / IECA condition | default steps "
        "(each way) | forwards / image | s / image (estimated) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in args.profiles:
        p = get_profile(name)
        n, fwd, cond = time_forward(name, 1 if name == "paper" else args.repeats, device)
        forwards = 2 * p.steps
        lines.append(
            f"| {name} | {p.image_size} | {n / 1e6:.2f}M | {fwd:.3f} | {cond:.3f} | {p.steps} | {forwards} "
            f"| {forwards * fwd + cond:.1f} |"
        )
    if "demo" in args.profiles:
        lines += [
            "",
            "Demo profile, measured end to end through `Diff3MScorer.score_batch` (preprocessing of a "
            "512x480 image, inversion + denoising, maps, scores, ROI):",
            "",
            "| batch | s / image |",
            "|---:|---:|",
        ]
        for batch in args.batches:
            lines.append(f"| {batch} | {time_demo_image(batch, args.repeats, device):.2f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
