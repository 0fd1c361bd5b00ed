"""The shipped demo weights load by name, carry a calibrated threshold, and score a bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from diff3m.models.checkpoint import resolve
from diff3m.models.inference import Diff3MScorer
from diff3m.models.preprocess import load_image

SAMPLES = Path(__file__).resolve().parents[3] / "diff3m" / "samples"


def test_builtin_demo_loads_and_scores() -> None:
    torch.set_num_threads(1)
    path = resolve("builtin:demo")
    assert sum(p.stat().st_size for p in path.iterdir()) < 50 * 1024 * 1024
    config = json.loads((path / "config.json").read_text())
    assert config["extra"]["calibration"]["source"] == "validation normals"
    recipe = json.loads((path / "recipe.json").read_text())
    assert recipe["script"] == "scripts/train_demo.py" and recipe["use_ehr"] is True
    scorer = Diff3MScorer.load("builtin:demo", device="cpu")
    assert scorer.threshold == config["threshold"] > 0
    image = load_image(SAMPLES / "DIFF3M-0001.dcm")
    ehr = {
        "sex": "F",
        "age": 63.0,
        "view": "PA",
        "bmi": 27.4,
        "systolic": 132.0,
        "diastolic": 84.0,
        "height": 165.0,
        "weight": 74.6,
    }
    [result] = scorer.score_batch([(image, ehr)], steps=2)
    assert np.isfinite(result.score) and result.anomaly_map.shape == image.pixels.shape
    assert result.ehr_used and result.params["profile"] == "demo-cpu"


def test_builtin_demo_separates_unseen_phantoms(tmp_path: Path) -> None:
    """Fresh phantoms (another seed than training): abnormal ones score above normal ones.

    bench/RESULTS.md has the full test split (AUROC 0.966 on 284 + 375); this small fixed set is a
    regression guard on the shipped weights and the scoring path, deterministic end to end.
    """
    from sklearn.metrics import roc_auc_score

    from diff3m.models.data import load_dataset
    from diff3m.models.data.phantoms import generate_dataset

    torch.set_num_threads(1)
    generate_dataset(tmp_path, 12, 12, size=64, seed=2026, fractions=(0.0, 0.0, 1.0), progress=False)
    samples = load_dataset(tmp_path, "mimic")
    scorer = Diff3MScorer.load("builtin:demo", device="cpu")
    results = scorer.score_batch([(load_image(s.path), s.values) for s in samples], batch_size=12)
    labels = [0 if s.normal else 1 for s in samples]
    auroc = roc_auc_score(labels, [r.score for r in results])
    assert auroc >= 0.8, auroc
    assert results[0].params["encoding"] == "noise" and results[0].params["draws"] == 8
