"""``diff3m bench inference`` and ``cpu-options`` on the tiny checkpoint: valid JSON, consistent numbers."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diff3m.bench import inference
from diff3m.cli import app


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_inference_json_last_line(tiny_checkpoint):
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "inference",
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            "2",
            "--batch-size",
            "2",
            "--rounds",
            "1",
            "--recipe-steps",
            "2",
            "--threads",
            "1",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = _last_json(res.stdout)
    assert out["default_seconds_per_image"] > 0 and out["reference_seconds_per_image"] > 0
    assert out["speedup"] == pytest.approx(
        out["reference_seconds_per_image"] / out["default_seconds_per_image"]
    )
    assert out["reference_steps"] == 399 and out["reference_noise_level"] == 400
    assert out["reference_batch_size"] == 1 and out["reference_passes_per_image"] == 798
    assert out["reference_scaled"] is True and out["reference_timed_passes"] == 4
    assert "scaled" in out["reference_note"]
    assert out["default_steps"] == 4 and out["default_passes_per_image"] == 8  # tiny profile: 4 + 4 steps
    assert out["device"] == "cpu" and out["threads"] == 1 and out["torch_version"]
    assert out["machine"]["cpu_model"] and out["machine"]["cpus"] >= 1
    assert "| published recipe | 399 | 400 | 1 | 798 |" in res.stdout


def test_inference_bad_checkpoint_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["bench", "inference", "--checkpoint", str(tmp_path / "none"), "--json"])
    assert res.exit_code == 2
    assert "does not exist" in res.output


def test_passes_per_image():
    assert inference.default_passes(400, 399) == 798
    assert inference.default_passes(300, 10) == 20


def test_auroc_of_default_and_recipe_on_the_same_images(tiny_checkpoint, tmp_path):
    data = tmp_path / "phantoms"
    made = CliRunner().invoke(
        app,
        [
            "phantoms",
            "--out",
            str(data),
            "--normal",
            "1",
            "--abnormal",
            "1",
            "--size",
            "32",
            "--seed",
            "1",
            "--split",
            "0,0,1",
            "--quiet",
        ],
    )
    assert made.exit_code == 0, made.output
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "inference",
            "--checkpoint",
            str(tiny_checkpoint),
            "--images",
            "1",
            "--batch-size",
            "2",
            "--rounds",
            "1",
            "--recipe-steps",
            "1",
            "--threads",
            "1",
            "--auroc",
            str(data),
            "--auroc-images",
            "2",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    a = _last_json(res.stdout)["auroc"]
    assert (a["n_normal"], a["n_abnormal"], a["split"]) == (1, 1, "test")
    for key in ("default_auroc", "reference_auroc"):
        assert 0.0 <= a[key] <= 1.0
    assert a["difference"] == pytest.approx(a["default_auroc"] - a["reference_auroc"])
    assert "AUROC on the same weights" in res.stdout
