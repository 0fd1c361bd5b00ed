"""Phantom test-split ablation: EHR vs image-only at equal training budget; AUROC and speed vs DDIM steps.

Usage (after ``scripts/train_demo.py`` and ``scripts/train_demo.py --no-ehr --out var/ablation/noehr``):

    python bench/ablation.py --part ehr      # EHR model, default steps
    python bench/ablation.py --part noehr    # image-only model (trained without EHR), same budget
    python bench/ablation.py --part ehr-off  # EHR model scored with the EHR hidden (inference-time ablation)
    python bench/ablation.py --part sweep --steps 10,25,50,100,399 --noise-levels 200,300,400
    python bench/ablation.py --part sweep --encodings noise --draws 4 --steps 1,5 --noise-levels 50,100,200
    python bench/ablation.py --part pca      # linear reference: PCA reconstruction of the same test split
    python bench/ablation.py --report --machine "..."   # append the tables to bench/RESULTS.md

Parts write <out>/<part>*.json (with ROC/PR/montage PNGs) so they can run in parallel (bench/gpu_demo.sh
runs them side by side on one GPU). ``--per-class`` caps the test images of each class (balanced).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from diff3m.models.evaluate import evaluate

OUT = Path("bench/results/ablation")
DATA = Path("var/phantoms-2500")  # scripts/train_demo.py PHANTOMS
EHR_CKPT = "diff3m/models/weights/demo"
NOEHR_CKPT = "var/ablation/noehr"
PARTS = ("ehr", "noehr", "ehr-off", "sweep", "pca")


def run_part(part: str, args: argparse.Namespace) -> None:
    """Evaluate one part of the ablation and write its JSON reports."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "split": "test",
        "device": args.device,
        "batch_size": args.batch_size,
        "progress": False,
    }
    if part in ("ehr", "noehr", "ehr-off"):
        ckpt = args.noehr_ckpt if part == "noehr" else args.ehr_ckpt
        evaluate(
            ckpt,
            Path(args.data),
            "mimic",
            out / f"{part}.json",
            limit=2 * args.per_class,
            use_ehr=part != "ehr-off",
            **common,
        )
    elif part == "sweep":
        for encoding in args.encodings.split(","):
            for level in _ints(args.noise_levels):
                for n in _ints(args.steps):
                    evaluate(
                        args.ehr_ckpt,
                        Path(args.data),
                        "mimic",
                        out / f"sweep_{encoding}_L{level}_s{n}.json",
                        steps=n,
                        noise_level=level,
                        encoding=encoding,
                        draws=args.draws if encoding == "noise" else 1,
                        limit=2 * args.sweep_per_class,
                        plots=False,
                        **common,
                    )
    elif part == "pca":
        from diff3m.bench.pca_baseline import evaluate_pca

        evaluate_pca(
            Path(args.data), out / "pca.json", components=args.pca_components, limit=2 * args.per_class
        )
    else:
        raise SystemExit(f"unknown part {part!r}")


def _ints(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def _findings(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['auroc']:.3f}" for k, v in sorted(r.get("per_finding_auroc", {}).items()))


def _row(name: str, r: dict[str, Any]) -> str:
    p = r["params"]
    return (
        f"| {name} | {p.get('encoding', 'inversion')} | {p['noise_level']} | {p['steps']} | "
        f"{p.get('draws', 1)} | "
        f"{r['n_normal']}/{r['n_abnormal']} | "
        f"{r['auroc']:.3f} | {r['ap']:.3f} | {r['f1']:.3f} | {r['sensitivity_at_95_specificity']:.3f} | "
        f"{r['seconds_per_image']:.4f} | {_findings(r)} |"
    )


def _variants(r: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(r.get("score_variants_auroc", {}).items()))


def report(out: Path = OUT, machine: str | None = None) -> str:
    """The RESULTS.md section for whatever parts have been run."""
    runs = {p.stem: json.loads(p.read_text()) for p in sorted(out.glob("*.json"))}
    if machine is None:
        machine = f"{platform.node() or 'host'} ({os.cpu_count()} CPUs, {platform.machine()}, "
        machine += f"torch {torch.__version__}, CPU only)"
    lines = [f"### {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC - {machine}", ""]
    header = (
        "| run | encoding | L | DDIM steps | draws | normal/abnormal | AUROC | AP | best F1 | sens@95%spec | "
        "s/image | per-finding AUROC |"
    )
    sep = "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    names = {
        "ehr": "EHR (IECA on)",
        "noehr": "image-only model (--no-ehr)",
        "ehr-off": "EHR model, EHR hidden at inference",
    }
    arms = [(names[k], runs[k]) for k in names if k in runs]
    if arms:
        lines += ["EHR vs image-only, same recipe and training budget (scripts/train_demo.py):", ""]
        lines += [header, sep]
        lines += [_row(n, r) for n, r in arms]
        lines.append("")
        lines += [f"- {n}: AUROC by score: {_variants(r)}" for n, r in arms]
        if "ehr" in runs and "noehr" in runs:
            lines += ["", f"EHR - image-only AUROC: {runs['ehr']['auroc'] - runs['noehr']['auroc']:+.3f}"]
        lines.append("")
    sweep = sorted(
        (r for n, r in runs.items() if n.startswith("sweep_")),
        key=lambda r: (
            r["params"].get("encoding", "inversion"),
            r["params"]["noise_level"],
            r["params"]["steps"],
        ),
    )
    if sweep:
        lines += [
            "Noise level L and DDIM steps (EHR model; the checkpoint's score, the others below the table):",
            "",
            header,
            sep,
        ]
        lines += [_row("EHR", r) for r in sweep]
        lines.append("")
        lines += [
            f"- {r['params'].get('encoding', 'inversion')}, L {r['params']['noise_level']}, "
            f"{r['params']['steps']} steps: {_variants(r)}"
            for r in sweep
        ]
        lines.append("")
    if "pca" in runs:
        r = runs["pca"]
        lines += [
            "Linear reference (diff3m/bench/pca_baseline.py): PCA with "
            f"{r['params']['components']} components "
            f"fitted on {r['n_train']} training normals, score {r['params']['score_name']}, same test images "
            f"({r['n_normal']}/{r['n_abnormal']}): AUROC **{r['auroc']:.3f}**, AP {r['ap']:.3f}, "
            f"sens@95%spec {r['sensitivity_at_95_specificity']:.3f}; per finding: {_findings(r)}; "
            f"by score: {_variants(r)}.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=PARTS)
    parser.add_argument("--data", default=str(DATA), help="phantom folder (MIMIC layout) with a test split")
    parser.add_argument("--ehr-ckpt", default=EHR_CKPT)
    parser.add_argument("--noehr-ckpt", default=NOEHR_CKPT)
    parser.add_argument("--out", default=str(OUT), help="folder for the JSON reports and plots")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--per-class", type=int, default=200, help="test images per class (EHR vs no-EHR)")
    parser.add_argument("--sweep-per-class", type=int, default=60, help="test images per class in the sweep")
    parser.add_argument("--steps", default="5,10,25", help="DDIM steps for the sweep")
    parser.add_argument("--noise-levels", default="300", help="noise levels L for the sweep")
    parser.add_argument("--encodings", default="inversion", help="inversion,noise: encodings for the sweep")
    parser.add_argument("--draws", type=int, default=4, help="noise draws averaged (noise encoding)")
    parser.add_argument("--pca-components", type=int, default=100, help="components of the PCA reference")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="append the section to bench/RESULTS.md")
    parser.add_argument("--machine", help="machine line of the report (default: this one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.part:
        run_part(args.part, args)
    if args.report:
        section = report(Path(args.out), args.machine)
        print(section)
        path = Path("bench/RESULTS.md")
        text = path.read_text() if path.exists() else "# Benchmark results\n"
        marker = "## Diff3M ablation (phantoms)"
        if marker not in text:
            text = text.rstrip("\n") + f"\n\n{marker}\n\n`bench/ablation.py` on a phantom test split.\n"
        start = text.index(marker)
        nxt = text.find("\n## ", start + len(marker))  # keep other sections where they are
        end = len(text) if nxt < 0 else nxt + 1
        text = text[:end].rstrip("\n") + "\n\n" + section + "\n" + ("\n" + text[end:] if nxt >= 0 else "")
        path.write_text(text)


if __name__ == "__main__":
    main()
