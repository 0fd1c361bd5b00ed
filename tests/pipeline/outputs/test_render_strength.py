"""The overlay is faint for scores far below the threshold and full at or above it."""

from __future__ import annotations

import numpy as np

from diff3m.pipeline.outputs.render import STRENGTH_MIN, overlay_strength
from diff3m.records import ScoreResult


def _result(score: float, threshold: float) -> ScoreResult:
    return ScoreResult(score=score, abnormal=score >= threshold, threshold=threshold,
                       anomaly_map=np.zeros((4, 4), np.float32), scores={}, roi=None, model_name="m",
                       model_version="1", ehr_used=True, seconds=0.0)


def test_strength_follows_score_over_threshold():
    assert overlay_strength(_result(0.0, 0.1)) == STRENGTH_MIN
    assert overlay_strength(_result(0.05, 0.1)) == 0.5
    assert overlay_strength(_result(0.3, 0.1)) == 1.0
    assert overlay_strength(_result(0.3, -1.0)) == 1.0  # no meaningful threshold: paint fully
