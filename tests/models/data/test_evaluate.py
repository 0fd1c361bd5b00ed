"""Evaluation: metric definitions, and phantoms -> train (tiny) -> evaluate end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.models.data import CxrSample, load_dataset
from diff3m.models.data.phantoms import generate_dataset
from diff3m.models.evaluate import EvaluationError, binary_metrics, per_finding_auroc


def test_binary_metrics_definitions() -> None:
    perfect = binary_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert perfect.auroc == 1.0 and perfect.ap == 1.0 and perfect.f1 == 1.0
    assert perfect.f1_threshold == 0.8 and perfect.sensitivity_at_95_specificity == 1.0
    inverted = binary_metrics([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4])
    assert inverted.auroc == 0.0 and inverted.sensitivity_at_95_specificity == 0.0
    # 20 normals, 10 abnormals: one normal above every abnormal -> specificity 95% reached at sens 1.0
    y = [0] * 20 + [1] * 10
    s = [i / 100 for i in range(19)] + [0.99] + [0.5 + i / 100 for i in range(10)]
    m = binary_metrics(y, s)
    assert m.auroc == pytest.approx(190 / 200)
    assert m.sensitivity_at_95_specificity == 1.0 and m.threshold_at_95_specificity == pytest.approx(0.5)
    assert m.f1 == pytest.approx(2 * (10 / 11) * 1.0 / (10 / 11 + 1.0))
    with pytest.raises(EvaluationError):
        binary_metrics([0, 0], [0.1, 0.2])


def test_per_finding_auroc() -> None:
    def smp(normal: bool, *findings: str) -> CxrSample:
        return CxrSample(Path("x"), {}, normal, "test", "s", findings=findings)

    samples = [smp(True), smp(True), smp(False, "Cardiomegaly"), smp(False, "Lung Lesion", "Cardiomegaly")]
    out = per_finding_auroc(samples, [0.1, 0.3, 0.2, 0.9])
    assert out["Lung Lesion"] == {"auroc": 1.0, "n": 1}
    assert out["Cardiomegaly"]["auroc"] == pytest.approx(0.75) and out["Cardiomegaly"]["n"] == 2


def test_phantoms_train_evaluate_end_to_end(tmp_path: Path) -> None:
    from diff3m.models.train import train

    torch.set_num_threads(1)
    data = tmp_path / "phantoms"
    generate_dataset(data, 10, 6, size=32, seed=3, fractions=(0.6, 0.0, 0.4), progress=False)
    ckpt = train(
        load_dataset(data, "mimic"),
        tmp_path / "ckpt",
        profile="tiny",
        steps=4,
        seed=0,
        calibration_images=2,
        progress=False,
    )
    out = tmp_path / "report" / "eval.json"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data),
            "--layout",
            "mimic",
            "--out",
            str(out),
            "--steps",
            "2",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    for key in (
        "auroc",
        "ap",
        "f1",
        "f1_threshold",
        "sensitivity_at_95_specificity",
        "n_normal",
        "n_abnormal",
        "seconds_per_image",
        "per_finding_auroc",
    ):
        assert key in report, key
    test = [s for s in load_dataset(data, "mimic") if s.split == "test"]
    assert report["n_normal"] == sum(s.normal for s in test) and report["n_abnormal"] == 6
    assert 0.0 <= report["auroc"] <= 1.0 and report["seconds_per_image"] > 0
    assert report["params"]["steps"] == 2 and report["data"]["splits_scored"] == ["test"]
    cases = report["cases"]  # per image, for paired comparisons
    assert sorted(c["study_id"] for c in cases) == sorted(s.study_id for s in test)
    assert roc_auc_score([not c["normal"] for c in cases], [c["score"] for c in cases]) == report["auroc"]
    assert set(report["per_finding_auroc"]) <= {
        "Cardiomegaly",
        "Consolidation",
        "Lung Lesion",
        "Pleural Effusion",
    }
    for name in report["plots"].values():
        with Image.open(out.parent / name) as im:
            assert im.format == "PNG" and im.size[0] > 100
    # a split without both classes is a clear error, not a crash
    bad = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(data),
            "--layout",
            "mimic",
            "--out",
            str(tmp_path / "x.json"),
            "--split",
            "train",
            "--quiet",
        ],
    )
    assert bad.exit_code == 2 and "both normal and abnormal" in bad.output
    # --no-plots: the same report, no images beside it
    bare = tmp_path / "bare" / "eval.json"
    args = ["evaluate", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(bare)]
    res = CliRunner().invoke(app, [*args, "--steps", "2", "--device", "cpu", "--no-plots", "--quiet"])
    assert res.exit_code == 0, res.output
    plain = json.loads(bare.read_text())
    assert "plots" not in plain and list(bare.parent.iterdir()) == [bare]
    assert plain["cases"] == report["cases"]
