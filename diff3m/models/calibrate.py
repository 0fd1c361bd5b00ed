"""Calibration of a checkpoint on a site's data: residual statistics and the decision threshold.

Both belong to one sampling recipe (encoding, noise level, steps, draws) and one score, so changing any
of them means calibrating again. Training calls this at its end; ``diff3m calibrate`` does it for an
existing checkpoint, for instance on a site's own normal studies or with another recipe.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from diff3m.models import checkpoint
from diff3m.models.data import CxrSample
from diff3m.models.inference import Diff3MScorer
from diff3m.models.normative import ResidualStats
from diff3m.models.preprocess import PreparedImage, PreprocessError, load_image
from diff3m.records import FieldValue

STATS_IMAGES = 200  # training normals for the residual statistics
THRESHOLD_IMAGES = 100  # validation normals for the threshold
QUANTILE = 0.95  # threshold = this quantile of validation-normal scores (target specificity)
VALIDATION = ("validate", "val", "valid", "validation")
RECIPE_KEYS = ("encoding", "noise_level", "steps", "draws", "ehr_guidance", "score_name")


def readable(samples: Sequence[CxrSample]) -> list[tuple[PreparedImage, dict[str, FieldValue]]]:
    """(image, EHR values) of the samples whose image can be read; unreadable ones are left out."""
    items = []
    for s in samples:
        try:
            items.append((load_image(s.path), s.values))
        except (PreprocessError, OSError):
            continue
    return items


def fit_residual_stats(
    ckpt: Path, train_normals: Sequence[CxrSample], device: str, limit: int = STATS_IMAGES
) -> ResidualStats:
    """Residual statistics from up to ``limit`` training normals, written into the checkpoint.

    Training images, not validation ones: the threshold is then set on normals the statistics have not seen.
    """
    items = readable(train_normals[:limit])
    if len(items) < 2:
        raise ValueError(f"residual statistics need at least 2 readable training normals, got {len(items)}")
    stats = ResidualStats.fit(Diff3MScorer.load(ckpt, device=device).residual_maps(items))
    stats.save(ckpt)
    return stats


def calibrate_threshold(
    ckpt: Path,
    samples: Sequence[CxrSample],
    train_normals: Sequence[CxrSample],
    device: str,
    limit: int = THRESHOLD_IMAGES,
    quantile: float = QUANTILE,
) -> float | None:
    """Threshold = ``quantile`` of validation-normal scores (training normals if none); None without images.

    The test split is never used: a threshold tuned on it would flatter the evaluation.
    """
    held = [s for s in samples if s.normal and s.split in VALIDATION]
    items = readable((held or list(train_normals))[:limit])
    if not items:
        return None
    results = Diff3MScorer.load(ckpt, device=device).score_batch(items, threshold=float("inf"))
    scores = np.array([r.score for r in results], dtype=np.float64)
    threshold = float(np.quantile(scores, quantile))
    source = "validation normals" if held else "training normals"
    calibration = {"n": len(scores), "quantile": quantile, "source": source}
    checkpoint.update_config(ckpt, threshold=threshold, extra={"calibration": calibration})
    record = {"scores": scores.tolist(), "threshold": threshold, **calibration}
    (ckpt / "calibration.json").write_text(json.dumps(record) + "\n")
    return threshold


def calibrate(
    ckpt: Path,
    samples: Sequence[CxrSample],
    train_normals: Sequence[CxrSample],
    device: str = "auto",
    recipe: dict[str, Any] | None = None,
    stats_images: int = STATS_IMAGES,
    threshold_images: int = THRESHOLD_IMAGES,
) -> dict[str, Any]:
    """Set the sampling ``recipe`` (encoding, noise_level, steps, draws, ehr_guidance, score_name), then
    refit both.

    A score that needs residual statistics is switched on only once they are written, so the checkpoint
    loads at every step.
    """
    wanted = dict(recipe or {})
    score = wanted.pop("score_name", None) or checkpoint.load_config(ckpt).score_name
    interim = "smoothed_max" if score in checkpoint.NEEDS_STATS else score
    checkpoint.update_config(ckpt, **wanted, score_name=interim)
    stats = fit_residual_stats(ckpt, train_normals, device, stats_images) if stats_images > 0 else None
    checkpoint.update_config(ckpt, score_name=score)
    threshold = calibrate_threshold(ckpt, samples, train_normals, device, threshold_images)
    return {
        "checkpoint": str(ckpt),
        "score_name": score,
        "residual_stats_n": stats.n if stats else None,
        "threshold": threshold,
        **{k: v for k, v in checkpoint.load_config(ckpt).to_dict().items() if k in RECIPE_KEYS},
    }
