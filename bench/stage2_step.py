"""Stage-2 training speed with and without the masked branch (``train --no-stage2-masked-branch``).

Each variant is a short real ``train()`` run of the shipped network (``builtin:demo``'s profile, its
batch) on a small phantom set, straight into stage 2; seconds per step come from the run's own
train_log.csv between steps ``--skip`` and ``--steps`` (the first steps warm the allocator up). The
variants run in interleaved rounds in this one process and the medians are compared. Prints a Markdown
section for bench/RESULTS.md.

Run: ``.venv/bin/python bench/stage2_step.py [--rounds 3] [--steps 40] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from diff3m.bench.machine import machine_info
from diff3m.models import checkpoint
from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import generate_dataset
from diff3m.models.train import LOG_FILE, seconds_per_step, train

VARIANTS = {"published loss (masked branch)": True, "noise loss alone (no masked branch)": False}


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="stage-2 steps per run")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out of the timing")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = machine_info()  # the load average before this script's own runs
    profile = checkpoint.load_config("builtin:demo").profile
    work = Path(tempfile.mkdtemp(prefix="stage2-step-"))
    generate_dataset(work / "data", n_normal=48, n_abnormal=0, size=profile.image_size, progress=False)
    samples = load_dataset(work / "data", "mimic")
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, masked in VARIANTS.items():
            run = train(
                samples,
                work / f"{r}-{masked}",
                profile=profile,
                steps=args.steps,
                stage1_steps=0,
                stage2_masked_branch=masked,
                stage2_max_noise_level=200,
                calibration_images=0,
                progress=False,
                resume=False,
                log_every=args.skip,
            )
            times[name].append(seconds_per_step(run / LOG_FILE, args.skip, args.steps))
    base = statistics.median(times[next(iter(VARIANTS))])
    print(machine.heading() + "\n")
    print(
        f"Network `{profile.name}` (builtin:demo's), batch {profile.batch_size}, stage 2 below noise level "
        f"200, {args.steps - args.skip} timed steps per run, median of {args.rounds} interleaved rounds.\n"
    )
    print("| stage 2 | s / step | speed-up | rounds |")
    print("|---|---:|---:|---|")
    for name, values in times.items():
        med = statistics.median(values)
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"| {name} | {med:.3f} | {base / med:.2f}x | {rounds} |")


if __name__ == "__main__":
    main()
