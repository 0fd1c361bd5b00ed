"""Scoring study: how a model's residual maps become an image score, chosen on validation only.

The network and its sampling are fixed (a checkpoint: the shipped ``builtin:demo`` unless told); what
varies is what happens to the residual maps |x - x_hat| afterwards: the Gaussian smoothing (sigma,
model-grid pixels), the noise levels read, the aggregation (the peak, or the mean of the k highest pixels),
and how several levels are fused: by averaging their normalised maps (``map_mean``), or by scoring each
level's map on its own, putting each level's score in units of its spread over the statistics images, and
taking the highest (``score_max``: one level can flag what another misses, a small nodule at a low level, a
heart too large for the patient at a higher one). Residual statistics come from the first 200 training
normals (as ``diff3m calibrate``); every variant is ranked by its AUROC on the validation split and only
then scored on the test split, so the test numbers are not tuned on.

With ``--baseline`` a second checkpoint (the image-only arm of an EHR ablation) is read through every
variant too, and each row carries the EHR gain (this checkpoint's AUROC minus the baseline's). Two picks,
both made on validation: the variant where this checkpoint scores best (what a user would ship), and the
variant with the largest validation gain. When some variants fuse levels by ``score_max``, a further pick:
the one of them where this checkpoint scores best on validation. ``--cases DIR`` writes each pick's per-image
test scores (``PICK-b.json``; with ``--baseline`` also the baseline's, ``PICK-a.json``) as evaluate-style
reports, for ``bench/paired_auroc.py``.

Usage:

    python bench/scoring_study.py                         # computes (or reuses) the maps, writes JSON
    python bench/scoring_study.py --report --machine "..."  # appends the table to bench/RESULTS.md
    python bench/scoring_study.py --checkpoint var/hidden/ehr --cache var/scoring-study/ehr \\
        --baseline var/hidden/noehr --baseline-cache var/scoring-study/noehr --data var/phantoms-hidden \\
        --levels 25,50,100,150 --cases var/scoring-study/cases --out bench/results/hidden-heart/study.json

Run the two checkpoints' maps side by side first (one thread each, no ``--baseline``): they are cached.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from diff3m.models.calibrate import STATS_IMAGES, readable
from diff3m.models.data import CxrSample, load_dataset
from diff3m.models.evaluate import binary_metrics, cases, per_finding_auroc
from diff3m.models.inference import Diff3MScorer, smooth_map
from diff3m.models.normative import ResidualStats
from diff3m.models.train import training_samples

DATA = Path("var/phantoms-2500")  # scripts/train_demo.py PHANTOMS
CACHE = Path("var/scoring-study")
OUT = Path("bench/results/scoring/study.json")
SIGMAS = (1.0, 1.5, 2.0, 3.0)
AGGREGATIONS = ("max", "top4", "top16", "top64")
SPLITS = ("validate", "test")
Sets = dict[str, list[CxrSample]]
Maps = dict[tuple[str, int], np.ndarray]


def residuals(
    scorer: Diff3MScorer, samples: list[CxrSample], level: int, name: str, cache: Path
) -> np.ndarray:
    """Raw residual maps of ``samples`` at noise ``level`` (cached under ``cache``: they take minutes)."""
    path = cache / f"{name}-L{level}.npy"
    if path.is_file():
        return np.load(path)
    items = readable(samples)
    if len(items) != len(samples):
        raise SystemExit(f"{len(samples) - len(items)} unreadable images in {name}")
    t0 = time.perf_counter()
    maps, geos = scorer.raw_residuals(items, noise_level=level, batch_size=16)
    if any(g.content_rows != g.size or g.content_cols != g.size for g in geos):
        raise SystemExit("the study assumes square images that fill the model grid (the phantoms do)")
    print(
        f"{cache.name} {name} L{level}: {len(items)} images in {time.perf_counter() - t0:.0f} s", flush=True
    )
    cache.mkdir(parents=True, exist_ok=True)
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


def load_sets(data: Path) -> Sets:
    """The statistics images (first training normals), validation and test."""
    samples = load_dataset(data, "mimic")
    return {
        "stats": training_samples(samples)[:STATS_IMAGES],
        "validate": [s for s in samples if s.split == "validate"],
        "test": [s for s in samples if s.split == "test"],
    }


def arm_maps(ckpt: str, sets: Sets, levels: list[int], cache: Path, device: str) -> tuple[Diff3MScorer, Maps]:
    """A checkpoint and its raw residual maps of every set at every level."""
    scorer = Diff3MScorer.load(ckpt, device=device)
    return scorer, {
        (name, lv): residuals(scorer, group, lv, name, cache) for name, group in sets.items() for lv in levels
    }


def standardised(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Image scores in units of their spread over reference (normal) images: (s - mean) / std."""
    return (scores - reference.mean()) / max(float(reference.std()), 1e-12)


def variants(
    raw: Maps, levels: list[int]
) -> Iterator[tuple[tuple[int, ...], float, str, str, dict[str, np.ndarray]]]:
    """(levels, sigma, aggregation, fusion, image scores of each split) of every variant, in a fixed order.

    A single level has one fusion (``map_mean``); a combination of levels has both, ``map_mean`` and
    ``score_max``.
    """
    combos = [c for r in range(1, len(levels) + 1) for c in itertools.combinations(levels, r)]
    names = ("stats", *SPLITS)
    for sigma in SIGMAS:
        smoothed = {key: smooth(maps, sigma) for key, maps in raw.items()}
        stats = {lv: ResidualStats.fit(smoothed[("stats", lv)]) for lv in levels}
        zmaps = {
            (name, lv): np.stack([stats[lv].z(m) for m in smoothed[(name, lv)]])
            for name in names
            for lv in levels
        }
        for how in AGGREGATIONS:
            # each level's own image scores, in units of their spread over the statistics images
            level_z = {
                (name, lv): standardised(
                    aggregate(zmaps[(name, lv)], how), aggregate(zmaps[("stats", lv)], how)
                )
                for name in SPLITS
                for lv in levels
            }
            for combo in combos:
                yield (
                    combo,
                    sigma,
                    how,
                    "map_mean",
                    {
                        name: aggregate(np.mean([zmaps[(name, lv)] for lv in combo], axis=0), how)
                        for name in SPLITS
                    },
                )
                if len(combo) > 1:
                    yield (
                        combo,
                        sigma,
                        how,
                        "score_max",
                        {name: np.max([level_z[(name, lv)] for lv in combo], axis=0) for name in SPLITS},
                    )


def metrics(labels: dict[str, list[int]], scores: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """AUROC, AP and sensitivity at 95 % specificity of each split."""
    out = {}
    for name in SPLITS:
        m = binary_metrics(labels[name], scores[name].tolist())
        out[name] = {"auroc": m.auroc, "ap": m.ap, "sens_at_95_spec": m.sensitivity_at_95_specificity}
    return out


def cases_report(
    samples: list[CxrSample], scores: np.ndarray, ckpt: str, row: dict[str, Any]
) -> dict[str, Any]:
    """One checkpoint's test scores under one variant, in ``diff3m evaluate``'s per-image form."""
    return {
        "checkpoint": ckpt,
        "variant": {k: row[k] for k in ("levels", "sigma", "aggregation", "fusion")},
        "auroc": binary_metrics([0 if s.normal else 1 for s in samples], scores.tolist()).auroc,
        "cases": cases(samples, scores.tolist()),
    }


def study(args: argparse.Namespace) -> dict[str, Any]:
    """Every (levels, sigma, aggregation) variant's validation and test metrics; the validation picks."""
    levels = [int(v) for v in args.levels.split(",")]
    sets = load_sets(Path(args.data))
    scorer, raw = arm_maps(args.checkpoint, sets, levels, Path(args.cache), args.device)
    base_raw = None
    if args.baseline:
        base_cache = Path(
            args.baseline_cache or Path(args.cache).with_name(Path(args.cache).name + "-baseline")
        )
        base_raw = arm_maps(args.baseline, sets, levels, base_cache, args.device)[1]
    labels = {name: [0 if s.normal else 1 for s in sets[name]] for name in SPLITS}
    rows: list[dict[str, Any]] = []
    scores: list[tuple[np.ndarray, np.ndarray | None]] = []  # each row's test scores: (this, baseline)
    base_variants = variants(base_raw, levels) if base_raw else None
    for combo, sigma, how, fusion, split_scores in variants(raw, levels):
        row: dict[str, Any] = {
            "levels": list(combo),
            "sigma": sigma,
            "aggregation": how,
            "fusion": fusion,
            **metrics(labels, split_scores),
        }
        row["test_per_finding"] = per_finding_auroc(sets["test"], split_scores["test"].tolist())
        base_test = None
        if base_variants is not None:
            *_, base_scores = next(base_variants)
            row["baseline"] = metrics(labels, base_scores)
            row["baseline_test_per_finding"] = per_finding_auroc(sets["test"], base_scores["test"].tolist())
            row["gain"] = {name: row[name]["auroc"] - row["baseline"][name]["auroc"] for name in SPLITS}
            base_test = base_scores["test"]
        scores.append((split_scores["test"], base_test))
        rows.append(row)
    recipe = ([scorer.config.noise_level], scorer.sigma, "max", "map_mean")

    def best(value: Callable[[dict[str, Any]], float]) -> int:
        """The index of the row with the highest ``value`` (ties: fewer levels, less smoothing)."""
        return max(
            range(len(rows)), key=lambda i: (value(rows[i]), -len(rows[i]["levels"]), -rows[i]["sigma"])
        )

    picks = {
        "shipped": next(
            i
            for i, r in enumerate(rows)
            if (r["levels"], r["sigma"], r["aggregation"], r["fusion"]) == recipe
        ),
        "validation_pick": best(lambda r: r["validate"]["auroc"]),
    }
    if args.baseline:
        picks["gain_pick"] = best(lambda r: r["gain"]["validate"])
    if any(r["fusion"] == "score_max" for r in rows):
        picks["score_max_pick"] = best(
            lambda r: r["validate"]["auroc"] if r["fusion"] == "score_max" else -1.0
        )
    result: dict[str, Any] = {
        "date": dt.date.today().isoformat(),
        "checkpoint": scorer.version,
        "checkpoint_path": args.checkpoint,
        "baseline_path": args.baseline,
        "data": args.data,
        "draws": scorer.config.draws,
        "n": {name: {"normal": labels[name].count(0), "abnormal": labels[name].count(1)} for name in SPLITS}
        | {"stats": len(sets["stats"])},
        **{pick: rows[i] for pick, i in picks.items()},
        "rows": rows,
    }
    if args.cases:
        out = Path(args.cases)
        out.mkdir(parents=True, exist_ok=True)
        for pick, i in picks.items():
            for arm, ckpt, arm_scores in (
                ("a", args.baseline, scores[i][1]),
                ("b", args.checkpoint, scores[i][0]),
            ):
                if ckpt is None or arm_scores is None:
                    continue
                report = cases_report(sets["test"], arm_scores, ckpt, rows[i])
                (out / f"{pick}-{arm}.json").write_text(json.dumps(report) + "\n")
    return result


def report(result: dict[str, Any], machine: str) -> str:
    """The RESULTS.md section: the shipped recipe, the validation pick(s), and the best few by validation."""
    gains = "gain" in result["shipped"]

    def line(r: dict[str, Any], note: str = "") -> str:
        per = r["test_per_finding"]
        finding = ", ".join(f"{k} {v['auroc']:.3f}" for k, v in sorted(per.items()))
        fused = " (score max)" if r.get("fusion") == "score_max" else ""
        cells = [
            f"{'+'.join(f'L{lv}' for lv in r['levels'])}{fused}",
            f"{r['sigma']:g}",
            r["aggregation"],
            f"{r['validate']['auroc']:.3f}",
            f"{r['test']['auroc']:.3f}",
            f"{r['test']['ap']:.3f}",
            f"{r['test']['sens_at_95_spec']:.2f}",
        ]
        if gains:
            cells += [
                f"{r['baseline']['test']['auroc']:.3f}",
                f"{r['gain']['validate']:+.3f}",
                f"{r['gain']['test']:+.3f}",
            ]
        return "| " + " | ".join([*cells, finding, note]) + " |"

    fused = [result["score_max_pick"]] if "score_max_pick" in result else []
    named = [result["shipped"], result["validation_pick"], *([result["gain_pick"]] if gains else []), *fused]
    top = [r for r in sorted(result["rows"], key=lambda r: -r["validate"]["auroc"]) if r not in named][:6]
    n = result["n"]
    head = "| noise levels | sigma | aggregation | val AUROC | test AUROC | test AP | test sens@95spec "
    if gains:
        head += "| baseline test AUROC | val gain | test gain "
    out = [
        f"\n## Diff3M scoring study ({result['date']})\n",
        f"Machine: {machine}. Checkpoint {result['checkpoint']} ({result['draws']} noise draws per level); "
        f"statistics from {n['stats']} training normals; chosen on validation "
        f"({n['validate']['normal']} + {n['validate']['abnormal']}), reported on test "
        f"({n['test']['normal']} + {n['test']['abnormal']}). `bench/scoring_study.py`.\n",
        head + "| test per finding | |",
        "|---" * (head.count("|") + 2) + "|",
        line(result["shipped"], "checkpoint's recipe"),
        line(result["validation_pick"], "validation pick"),
        *([line(result["gain_pick"], "largest validation gain")] if gains else []),
        *(line(r, "best score max on validation") for r in fused),
        *(line(r) for r in top),
    ]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="builtin:demo", help="the checkpoint studied (the EHR arm)")
    ap.add_argument("--data", default=str(DATA), help="phantoms or a dataset in the MIMIC layout")
    ap.add_argument("--cache", default=str(CACHE), help="where this checkpoint's residual maps are kept")
    ap.add_argument("--baseline", help="a second checkpoint read through every variant (the image-only arm)")
    ap.add_argument("--baseline-cache", help="where the baseline's maps are kept (default: CACHE-baseline)")
    ap.add_argument("--cases", help="folder for the picks' per-image test scores (bench/paired_auroc.py)")
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
    result = study(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result, args.machine or "this machine"))


if __name__ == "__main__":
    main()
