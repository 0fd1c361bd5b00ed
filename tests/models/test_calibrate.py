"""``diff3m calibrate``: a new sampling recipe, refitted residual statistics and threshold, in place."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.models import checkpoint
from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import generate_dataset
from diff3m.models.normative import STATS_FILE
from diff3m.models.train import training_samples


def test_calibrate_sets_recipe_statistics_and_threshold(tmp_path: Path, tiny_checkpoint: Path) -> None:
    torch.set_num_threads(1)
    data = tmp_path / "phantoms"
    generate_dataset(data, 10, 4, size=32, seed=5, fractions=(0.5, 0.3, 0.2), progress=False)
    ckpt = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ckpt)
    before = checkpoint.load_config(ckpt)
    n_train = len(training_samples(load_dataset(data, "mimic")))
    assert not (ckpt / STATS_FILE).exists()
    args = ["calibrate", "--checkpoint", str(ckpt), "--data", str(data), "--device", "cpu"]
    recipe = ["--encoding", "noise", "--noise-level", "40", "--steps", "1", "--draws", "2"]
    recipe += ["--ehr-guidance", "2"]
    res = CliRunner().invoke(app, [*args, *recipe, "--score", "normalized_max", "--threshold-images", "3"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["score_name"] == "normalized_max" and report["residual_stats_n"] == n_train
    cfg = checkpoint.load(ckpt).config
    assert (cfg.encoding, cfg.noise_level, cfg.steps, cfg.draws, cfg.ehr_guidance) == ("noise", 40, 1, 2, 2.0)
    assert report["ehr_guidance"] == 2.0
    assert cfg.threshold == report["threshold"] != before.threshold
    assert cfg.extra["calibration"] == {"n": 3, "quantile": 0.95, "source": "validation normals"}
    record = json.loads((ckpt / "calibration.json").read_text())
    assert len(record["scores"]) == 3 and record["threshold"] == cfg.threshold
    bad = CliRunner().invoke(app, [*args, "--encoding", "sideways"])
    assert bad.exit_code == 2 and "encoding" in bad.output
    assert checkpoint.load(ckpt).config.encoding == "noise"  # a refused recipe changes nothing
    missing = CliRunner().invoke(
        app, ["calibrate", "--checkpoint", str(ckpt), "--data", str(tmp_path / "none")]
    )
    assert missing.exit_code == 2
