"""Evaluate a checkpoint on a labelled dataset: AUROC, AP, best F1, sensitivity at 95% specificity, plots."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve
from tqdm.auto import tqdm

from diff3m.models.data import CxrSample, load_dataset, normalise_split
from diff3m.models.data.plots import MontageCase, montage, pr_plot, roc_plot

MONTAGE_CASES = 6
SAMPLING_KEYS = ("steps", "noise_level", "encoding", "draws", "ehr_guidance")
THUMB = 96


class EvaluationError(ValueError):
    """The dataset cannot be evaluated (no images, only one class, ...)."""


@dataclass(frozen=True)
class BinaryMetrics:
    """Threshold-free and best-threshold metrics of scores against labels (1 = abnormal)."""

    auroc: float
    ap: float
    f1: float
    f1_threshold: float
    sensitivity_at_95_specificity: float
    threshold_at_95_specificity: float


def binary_metrics(labels: Sequence[int], scores: Sequence[float]) -> BinaryMetrics:
    """AUROC, AP, the best F1 over thresholds (and its threshold), sensitivity at >= 95 % specificity."""
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=np.float64)
    if len(set(y.tolist())) != 2:
        raise EvaluationError("need both normal and abnormal images to compute AUROC")
    precision, recall, thresholds = precision_recall_curve(y, s)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    fpr, tpr, roc_thr = roc_curve(y, s)
    ok = fpr <= 0.05
    i95 = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
    return BinaryMetrics(
        auroc=float(roc_auc_score(y, s)),
        ap=float(average_precision_score(y, s)),
        f1=float(f1[best]),
        f1_threshold=float(thresholds[best]) if len(thresholds) else float("nan"),
        sensitivity_at_95_specificity=float(tpr[i95]),
        threshold_at_95_specificity=float(roc_thr[i95]),
    )


def per_finding_auroc(samples: Sequence[CxrSample], scores: Sequence[float]) -> dict[str, dict[str, float]]:
    """For every finding label: AUROC of all normals against the abnormal images carrying it."""
    normal = [sc for smp, sc in zip(samples, scores, strict=True) if smp.normal]
    out: dict[str, dict[str, float]] = {}
    labels = sorted({f for smp in samples if not smp.normal for f in smp.findings})
    for label in labels:
        pos = [
            sc for smp, sc in zip(samples, scores, strict=True) if not smp.normal and label in smp.findings
        ]
        if normal and pos:
            y = [0] * len(normal) + [1] * len(pos)
            out[label] = {"auroc": float(roc_auc_score(y, normal + pos)), "n": len(pos)}
    return out


def _thumb(arr: np.ndarray, size: int = THUMB) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="area")[0, 0].numpy()


def cases(samples: Sequence[CxrSample], scores: Sequence[float]) -> list[dict[str, Any]]:
    """Each image's score with its id and labels: the report's per-image part (bench/paired_auroc.py)."""
    return [
        {"study_id": s.study_id, "score": float(v), "normal": s.normal, "findings": list(s.findings)}
        for s, v in zip(samples, scores, strict=True)
    ]


def choose_split(samples: Sequence[CxrSample], split: str | None) -> list[CxrSample]:
    """``split`` if given; otherwise the test split when there is one, else everything."""
    wanted = normalise_split(split)
    if wanted is None:
        wanted = "test" if any(s.split == "test" for s in samples) else None
    chosen = [s for s in samples if wanted is None or s.split == wanted]
    if not chosen:
        have = sorted({s.split for s in samples})
        raise EvaluationError(f"no images in split {wanted!r} (the dataset has {have or 'no images'})")
    return chosen


def evaluate(
    checkpoint: str | Path,
    data: Path,
    layout: str,
    out: Path,
    split: str | None = None,
    steps: int | None = None,
    noise_level: int | None = None,
    use_ehr: bool = True,
    device: str = "auto",
    encoding: str | None = None,
    draws: int | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
    plots: bool = True,
) -> dict[str, Any]:
    """Score the frontal images of ``data`` with ``checkpoint``; write the JSON report + plots to ``out``."""
    from diff3m.models.inference import Diff3MScorer
    from diff3m.models.preprocess import PreprocessError, load_image

    samples = choose_split(load_dataset(data, layout), split)
    if limit is not None:
        samples = balanced_subset(samples, limit)
    scorer = Diff3MScorer.load(checkpoint, device=device)
    kept: list[CxrSample] = []
    scores: list[float] = []
    variants: dict[str, list[float]] = {}
    model_seconds: list[float] = []
    unreadable = 0
    extremes: list[MontageCase] = []
    sampling: dict[str, Any] = {}
    started = time.perf_counter()
    bar = tqdm(total=len(samples), disable=not progress, desc="evaluate", unit="img")
    try:
        for start in range(0, len(samples), batch_size):
            chunk, items = [], []
            for s in samples[start : start + batch_size]:
                try:
                    items.append((load_image(s.path), s.values))
                    chunk.append(s)
                except (PreprocessError, OSError):
                    unreadable += 1
            if items:
                results = scorer.score_batch(
                    items,
                    steps=steps,
                    noise_level=noise_level,
                    use_ehr=use_ehr,
                    seed=seed,
                    batch_size=batch_size,
                    encoding=encoding,
                    draws=draws,
                )
                sampling = {k: results[0].params[k] for k in SAMPLING_KEYS}
                for s, (img, _), r in zip(chunk, items, results, strict=True):
                    kept.append(s)
                    scores.append(r.score)
                    model_seconds.append(r.seconds)
                    for name, v in r.scores.items():
                        variants.setdefault(name, []).append(v)
                    extremes.append(
                        MontageCase(
                            s.study_id,
                            r.score,
                            s.normal,
                            s.findings,
                            _thumb(img.pixels),
                            _thumb(r.anomaly_map),
                        )
                    )
                extremes = _keep_extremes(extremes)
            bar.update(len(samples[start : start + batch_size]))
    finally:
        bar.close()
    wall = time.perf_counter() - started
    if not kept:
        raise EvaluationError("no readable images")
    y = [0 if s.normal else 1 for s in kept]
    m = binary_metrics(y, scores)
    thr = scorer.threshold
    pred = np.asarray(scores) >= thr
    yy = np.asarray(y, dtype=bool)
    report: dict[str, Any] = {
        "auroc": m.auroc,
        "ap": m.ap,
        "f1": m.f1,
        "f1_threshold": m.f1_threshold,
        "sensitivity_at_95_specificity": m.sensitivity_at_95_specificity,
        "threshold_at_95_specificity": m.threshold_at_95_specificity,
        "seconds_per_image": float(np.mean(model_seconds)),
        "wall_seconds_per_image": wall / len(kept),
        "n_normal": int((~yy).sum()),
        "n_abnormal": int(yy.sum()),
        "n_unreadable": unreadable,
        "per_finding_auroc": per_finding_auroc(kept, scores),
        "score_variants_auroc": {k: float(roc_auc_score(y, v)) for k, v in sorted(variants.items())},
        "at_checkpoint_threshold": {
            "threshold": thr,
            "sensitivity": float((pred & yy).sum() / max(1, yy.sum())),
            "specificity": float((~pred & ~yy).sum() / max(1, (~yy).sum())),
        },
        "checkpoint": {
            "ref": str(checkpoint),
            "name": scorer.name,
            "version": scorer.version,
            "profile": scorer.profile_name,
            "score_name": scorer.config.score_name,
        },
        "params": {
            **sampling,  # as the scorer resolved it (arguments, else the checkpoint's recipe)
            "use_ehr": bool(use_ehr and scorer.config.use_ehr),
            "device": str(scorer.device),
            "batch_size": batch_size,
            "seed": seed,
        },
        "data": {
            "root": str(data),
            "layout": layout,
            "split": normalise_split(split) or "auto",
            "splits_scored": sorted({s.split for s in kept}),
        },
        # per image, for paired comparisons of two models on the same images (bench/paired_auroc.py)
        "cases": cases(kept, scores),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        report["plots"] = _plots(out, y, scores, m, extremes)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def balanced_subset(samples: list[CxrSample], limit: int) -> list[CxrSample]:
    """At most ``limit`` images, alternating normal and abnormal so both classes stay present."""
    normals = [s for s in samples if s.normal]
    abnormals = [s for s in samples if not s.normal]
    out: list[CxrSample] = []
    for i in range(max(len(normals), len(abnormals))):
        out += [g[i] for g in (normals, abnormals) if i < len(g)]
    return out[:limit]


def _keep_extremes(cases: list[MontageCase]) -> list[MontageCase]:
    if len(cases) <= 2 * MONTAGE_CASES:
        return cases
    ranked = sorted(cases, key=lambda c: c.score)
    return ranked[:MONTAGE_CASES] + ranked[-MONTAGE_CASES:]


def _plots(
    out: Path, y: list[int], scores: list[float], m: BinaryMetrics, extremes: list[MontageCase]
) -> dict[str, str]:
    stem = out.with_suffix("")
    fpr, tpr, _ = roc_curve(y, scores)
    precision, recall, _ = precision_recall_curve(y, scores)
    ranked = sorted(extremes, key=lambda c: c.score, reverse=True)
    k = min(MONTAGE_CASES, max(1, len(ranked) // 2))
    paths = {
        "roc": roc_plot(Path(f"{stem}_roc.png"), fpr, tpr, m.auroc, "ROC"),
        "pr": pr_plot(Path(f"{stem}_pr.png"), recall, precision, m.ap, float(np.mean(y)), "Precision-recall"),
        "montage": montage(Path(f"{stem}_montage.png"), ranked[:k], ranked[::-1][:k]),
    }
    return {k: p.name for k, p in paths.items()}
