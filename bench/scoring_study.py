"""Scoring study: how the demo model's residual maps become an image score, chosen on validation only.

The network and its sampling are fixed (the shipped ``builtin:demo``); what varies is what happens to
the residual maps |x - x_hat| afterwards: the Gaussian smoothing (sigma, model-grid pixels), the noise
levels whose normalised maps are averaged, and the aggregation (the peak, or the mean of the k highest
pixels). Residual statistics come from the first 200 training normals (as ``diff3m calibrate``); every
variant is ranked by its AUROC on the validation split (100 normals + 125 abnormal) and only then
scored on the test split (284 + 375), so the test numbers are not tuned on.

Usage:

    python bench/scoring_study.py                         # computes (or reuses) the maps, writes JSON
    python bench/scoring_study.py --report --machine "..."  # appends the table to bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from diff3m.models.calibrate import STATS_IMAGES, readable
from diff3m.models.data import CxrSample, load_dataset
from diff3m.models.evaluate import binary_metrics, per_finding_auroc
from diff3m.models.inference import Diff3MScorer, smooth_map
from diff3m.models.normative import ResidualStats
from diff3m.models.train import training_samples

DATA = Path("var/phantoms-2500")  # scripts/train_demo.py PHANTOMS
CACHE = Path("var/scoring-study")
OUT = Path("bench/results/scoring/study.json")
SIGMAS = (1.0, 1.5, 2.0, 3.0)
AGGREGATIONS = ("max", "top4", "top16")


def residuals(scorer: Diff3MScorer, samples: list[CxrSample], level: int, name: str) -> np.ndarray:
    """Raw residual maps of ``samples`` at noise ``level`` (cached in var/: they take minutes)."""
    path = CACHE / f"{name}-L{level}.npy"
    if path.is_file():
        return np.load(path)
    items = readable(samples)
    if len(items) != len(samples):
        raise SystemExit(f"{len(samples) - len(items)} unreadable images in {name}")
    t0 = time.perf_counter()
    maps, geos = scorer.raw_residuals(items, noise_level=level, batch_size=16)
    if any(g.content_rows != g.size or g.content_cols != g.size for g in geos):
        raise SystemExit("the study assumes square images that fill the model grid (the phantoms do)")
    print(f"{name} L{level}: {len(items)} images in {time.perf_counter() - t0:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, maps.astype(np.float32))
    return maps


def aggregate(z: np.ndarray, how: str) -> np.ndarray:
    """Image scores from normalised maps [N, S, S]: the peak, or the mean of the k highest pixels."""
    flat = z.reshape(z.shape[0], -1)
    if how == "max":
        return flat.max(1)
    k = int(how.removeprefix("top"))
    return np.sort(flat, axis=1)[:, -k:].mean(1)


def smooth(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Each map smoothed as the scorer does."""
    return np.stack([smooth_map(m, sigma) for m in maps])


def study(levels: list[int], device: str) -> dict[str, Any]:
    """Every (levels, sigma, aggregation) variant's validation and test metrics; the validation pick."""
    samples = load_dataset(DATA, "mimic")
    sets = {
        "stats": training_samples(samples)[:STATS_IMAGES],
        "validate": [s for s in samples if s.split == "validate"],
        "test": [s for s in samples if s.split == "test"],
    }
    scorer = Diff3MScorer.load("builtin:demo", device=device)
    raw = {(name, lv): residuals(scorer, group, lv, name) for name, group in sets.items() for lv in levels}
    labels = {name: [0 if s.normal else 1 for s in sets[name]] for name in ("validate", "test")}
    combos = [list(c) for r in range(1, len(levels) + 1) for c in itertools.combinations(levels, r)]
    rows = []
    for sigma in SIGMAS:
        smoothed = {key: smooth(maps, sigma) for key, maps in raw.items()}
        stats = {lv: ResidualStats.fit(smoothed[("stats", lv)]) for lv in levels}
        zmaps = {(name, lv): np.stack([stats[lv].z(m) for m in smoothed[(name, lv)]])
                 for name in ("validate", "test") for lv in levels}
        for combo, how in itertools.product(combos, AGGREGATIONS):
            row: dict[str, Any] = {"levels": combo, "sigma": sigma, "aggregation": how}
            for name in ("validate", "test"):
                z = np.mean([zmaps[(name, lv)] for lv in combo], axis=0)
                scores = aggregate(z, how)
                m = binary_metrics(labels[name], scores.tolist())
                row[name] = {"auroc": m.auroc, "ap": m.ap, "sens_at_95_spec": m.sensitivity_at_95_specificity}
                if name == "test":
                    row["test_per_finding"] = per_finding_auroc(sets[name], scores.tolist())
            rows.append(row)
    recipe = ([scorer.config.noise_level], scorer.sigma, "max")
    shipped = next(r for r in rows if (r["levels"], r["sigma"], r["aggregation"]) == recipe)
    best = max(rows, key=lambda r: (r["validate"]["auroc"], -len(r["levels"]), -r["sigma"]))
    return {
        "date": dt.date.today().isoformat(),
        "checkpoint": scorer.version,
        "draws": scorer.config.draws,
        "n": {name: {"normal": labels[name].count(0), "abnormal": labels[name].count(1)}
              for name in ("validate", "test")} | {"stats": len(sets["stats"])},
        "shipped": shipped,
        "validation_pick": best,
        "rows": rows,
    }


def report(result: dict[str, Any], machine: str) -> str:
    """The RESULTS.md section: the shipped recipe, the validation pick, and the best few by validation."""
    def line(r: dict[str, Any], note: str = "") -> str:
        per = r["test_per_finding"]
        finding = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in sorted(per.items()))
        return (f"| {'+'.join(f'L{lv}' for lv in r['levels'])} | {r['sigma']:g} | {r['aggregation']} "
                f"| {r['validate']['auroc']:.3f} | {r['test']['auroc']:.3f} | {r['test']['ap']:.3f} "
                f"| {r['test']['sens_at_95_spec']:.2f} | {finding} | {note} |")

    named = (result["shipped"], result["validation_pick"])
    top = [r for r in sorted(result["rows"], key=lambda r: -r["validate"]["auroc"]) if r not in named][:6]
    n = result["n"]
    out = [
        f"\n## Diff3M scoring study ({result['date']})\n",
        f"Machine: {machine}. Checkpoint {result['checkpoint']} ({result['draws']} noise draws per level); "
        f"statistics from {n['stats']} training normals; chosen on validation "
        f"({n['validate']['normal']} + {n['validate']['abnormal']}), reported on test "
        f"({n['test']['normal']} + {n['test']['abnormal']}). `bench/scoring_study.py`, "
        "all rows in `bench/results/scoring/study.json`.\n",
        "| noise levels | sigma | aggregation | val AUROC | test AUROC | test AP | test sens@95spec "
        "| test per finding | |",
        "|---|---|---|---|---|---|---|---|---|",
        line(result["shipped"], "shipped"),
        line(result["validation_pick"], "validation pick"),
        *(line(r) for r in top),
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="25,50,100", help="noise levels to combine (comma-separated)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true", help="append the table to bench/RESULTS.md")
    ap.add_argument("--machine", default="", help="the machine the study ran on, for the report")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report:
        text = report(json.loads(out.read_text()), args.machine or "unknown")
        with open("bench/RESULTS.md", "a") as f:
            f.write(text)
        print(text)
        return
    result = study([int(v) for v in args.levels.split(",")], args.device)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result, args.machine or "this machine"))


if __name__ == "__main__":
    main()
