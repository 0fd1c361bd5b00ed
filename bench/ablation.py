"""Phantom test-split ablation: EHR vs image-only at equal training budget; AUROC and speed vs DDIM steps.

Usage (after ``scripts/train_demo.py`` and ``scripts/train_demo.py --no-ehr --out var/ablation/noehr``):

    python bench/ablation.py --part ehr      # EHR model, default steps
    python bench/ablation.py --part noehr    # image-only model, same budget, default steps
    python bench/ablation.py --part sweep    # EHR model, DDIM steps 5, 10, 25
    python bench/ablation.py --report        # append the tables to bench/RESULTS.md

Parts write bench/results/ablation/<part>*.json (with ROC/PR/montage PNGs) so they can run in parallel.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path

import torch

from diff3m.models.evaluate import evaluate

OUT = Path("bench/results/ablation")
DATA = Path("var/phantoms-demo")
EHR_CKPT = "diff3m/models/weights/demo"
NOEHR_CKPT = "var/ablation/noehr"


def run_part(part: str, per_class: int, sweep_per_class: int, steps: list[int]) -> None:
    """Evaluate one part of the ablation and write its JSON reports."""
    OUT.mkdir(parents=True, exist_ok=True)
    if part in ("ehr", "noehr"):
        ckpt = EHR_CKPT if part == "ehr" else NOEHR_CKPT
        evaluate(
            ckpt,
            DATA,
            "mimic",
            OUT / f"{part}.json",
            split="test",
            device="cpu",
            limit=2 * per_class,
            progress=False,
        )
    elif part == "sweep":
        for n in steps:
            evaluate(
                EHR_CKPT,
                DATA,
                "mimic",
                OUT / f"sweep_steps{n}.json",
                split="test",
                steps=n,
                device="cpu",
                limit=2 * sweep_per_class,
                progress=False,
            )
    else:
        raise SystemExit(f"unknown part {part!r}")


def _row(name: str, r: dict) -> str:
    pf = r.get("per_finding_auroc", {})
    findings = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in sorted(pf.items()))
    return (
        f"| {name} | {r['params']['steps']} | {r['n_normal']}/{r['n_abnormal']} | {r['auroc']:.3f} | "
        f"{r['ap']:.3f} | {r['f1']:.3f} | {r['sensitivity_at_95_specificity']:.3f} | "
        f"{r['seconds_per_image']:.3f} | {findings} |"
    )


def report() -> str:
    """The RESULTS.md section for whatever parts have been run."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(OUT.glob("*.json"))}
    machine = f"{platform.node() or 'host'} ({os.cpu_count()} CPUs, {platform.machine()}, "
    machine += f"torch {torch.__version__}, CPU only)"
    lines = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC - {machine}", ""]
    header = (
        "| run | DDIM steps | normal/abnormal | AUROC | AP | best F1 | sens@95%spec | s/image | "
        "per-finding AUROC |"
    )
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---|"
    arms = [
        (n, r)
        for n, r in (("EHR (IECA on)", runs.get("ehr")), ("image-only (--no-ehr)", runs.get("noehr")))
        if r
    ]
    if arms:
        lines += [
            "EHR vs image-only, same recipe and training budget (scripts/train_demo.py):",
            "",
            header,
            sep,
        ]
        lines += [_row(n, r) for n, r in arms]
        if len(arms) == 2:
            lines += ["", f"EHR - image-only AUROC: {arms[0][1]['auroc'] - arms[1][1]['auroc']:+.3f}"]
        lines.append("")
    sweep = sorted(
        ((r["params"]["steps"], r) for n, r in runs.items() if n.startswith("sweep_")), key=lambda x: x[0]
    )
    if sweep:
        lines += ["DDIM steps (EHR model, noise level from the checkpoint):", "", header, sep]
        lines += [_row("EHR", r) for _, r in sweep]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["ehr", "noehr", "sweep"])
    parser.add_argument("--per-class", type=int, default=200, help="test images per class (EHR vs no-EHR)")
    parser.add_argument("--sweep-per-class", type=int, default=60, help="test images per class in the sweep")
    parser.add_argument("--steps", default="5,10,25", help="DDIM steps for the sweep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="append the section to bench/RESULTS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part:
        run_part(args.part, args.per_class, args.sweep_per_class, [int(s) for s in args.steps.split(",")])
    if args.report:
        section = report()
        print(section)
        path = Path("bench/RESULTS.md")
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        marker = "## Diff3M ablation (phantoms)"
        if marker not in text:
            text = (
                text.rstrip("\n") + f"\n\n{marker}\n\n`bench/ablation.py` on the phantom test split "
                "(var/phantoms-demo, seed 0).\n"
            )
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))  # keep other sections where they are
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip("\n") + "\n\n" + section + "\n" + ("\n" + text[end:] if nxt >= 0 else "")
        path.write_text(text)


if __name__ == "__main__":
    main()
