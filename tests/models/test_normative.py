"""Normal residual statistics: fit, z-map, files, and the normalized_max score end to end."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from diff3m.models import checkpoint
from diff3m.models.checkpoint import CheckpointError
from diff3m.models.inference import Diff3MScorer, map_scores
from diff3m.models.normative import STATS_FILE, ResidualStats
from diff3m.models.preprocess import Geometry
from diff3m.models.profiles import TINY
from diff3m.models.train import train, training_samples
from tests.models.synthetic import write_samples


def test_fit_z_and_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    maps = 0.05 + 0.01 * rng.standard_normal((50, 8, 8))
    maps[:, 2, 2] += 0.2  # a place every normal image misses by a lot
    stats = ResidualStats.fit(maps)
    assert stats.n == 50 and stats.mean.shape == (8, 8) and abs(float(stats.mean[2, 2]) - 0.25) < 0.01
    probe = np.full((8, 8), 0.05)
    probe[2, 2] = 0.25  # usual there: not anomalous
    probe[5, 5] = 0.25  # the same residual where it is unusual
    z = stats.z(probe)
    assert z[5, 5] > 10 and abs(z[2, 2]) < 2
    stats.save(tmp_path)
    again = ResidualStats.load(tmp_path)
    assert again is not None and again.n == 50 and np.array_equal(again.std, stats.std)
    assert ResidualStats.load(tmp_path / "none") is None
    with pytest.raises(ValueError, match="at least 2"):
        ResidualStats.fit(maps[:1])
    with pytest.raises(ValueError, match="does not match"):
        stats.z(np.zeros((4, 4)))


def test_normalized_max_ranks_the_unusual_residual_and_places_the_roi() -> None:
    rng = np.random.default_rng(1)
    maps = 0.02 + 0.002 * rng.standard_normal((40, 16, 16))
    maps[:, :, :3] += 0.3  # a border the model always misses
    stats = ResidualStats.fit(np.stack([ndimage.gaussian_filter(m, 1.0, mode="nearest") for m in maps]))
    geo = Geometry.fit(16, 16, 16)
    usual = np.full((16, 16), 0.02)
    usual[:, :3] = 0.32
    lesion = np.full((16, 16), 0.02)
    lesion[9:12, 9:12] = 0.12
    a, b = map_scores(usual, geo, 1.0, stats), map_scores(lesion, geo, 1.0, stats)
    assert a.scores["smoothed_max"] > b.scores["smoothed_max"]  # the raw map prefers the usual border
    assert b.scores["normalized_max"] > a.scores["normalized_max"]  # the normalized one the lesion
    assert b.box is not None and b.box[0] <= 10 <= b.box[2] and b.box[1] <= 10 <= b.box[3]
    assert "normalized_max" not in map_scores(lesion, geo, 1.0).scores


def test_training_writes_statistics_for_normalized_max(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    samples = write_samples(tmp_path / "img", n=5)
    prof = replace(
        TINY, name="tiny", encoding="noise", draws=2, steps=1, noise_level=60, score_name="normalized_max"
    )
    out = train(samples, tmp_path / "ck", profile=prof, steps=2, calibration_images=2, progress=False)
    assert (out / STATS_FILE).is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["score_name"] == "normalized_max" and cfg["encoding"] == "noise" and cfg["draws"] == 2
    scorer = Diff3MScorer.load(out, device="cpu")
    assert scorer.residual_stats is not None and scorer.residual_stats.n == len(training_samples(samples))
    [r] = scorer.score_batch([(s, None) for s in [_first_image(samples)]])
    assert r.score == r.scores["normalized_max"] and r.params["encoding"] == "noise"
    (out / STATS_FILE).unlink()
    with pytest.raises(CheckpointError, match="needs residual_stats"):
        checkpoint.load(out)
    (out / STATS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        checkpoint.load(out)


def _first_image(samples):  # type: ignore[no-untyped-def]
    from diff3m.models.preprocess import load_image

    return load_image(samples[0].path)
