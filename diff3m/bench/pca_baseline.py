"""A linear reference for the phantom benchmarks: PCA reconstruction error on the model grid.

Fit on the normal training images of a dataset (one-class, like Diff3M), score the test split by how
badly the leading principal components reconstruct each image. The report has the fields of
``diff3m evaluate``'s, so the two sit side by side in bench/RESULTS.md: a diffusion model that does not
beat this has not learned more than a linear model of the normal images.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from diff3m.models.data import CxrSample, load_dataset
from diff3m.models.evaluate import balanced_subset, binary_metrics, per_finding_auroc
from diff3m.models.preprocess import load_image
from diff3m.models.train import training_samples

GRID = 64


def _grid(samples: list[CxrSample], size: int) -> np.ndarray:
    return np.stack([load_image(s.path).to_grid(size)[0] for s in samples]).reshape(len(samples), -1)


def pca_scores(train: np.ndarray, test: np.ndarray, components: int, size: int) -> dict[str, np.ndarray]:
    """Residual scores of ``test`` rows against the top principal components of ``train`` rows."""
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    basis = vt[:components]
    centred = test - mean
    residual = np.abs(centred - (centred @ basis.T) @ basis).reshape(-1, size, size)
    smooth = np.stack([ndimage.gaussian_filter(r, max(1.0, size / 64)) for r in residual])
    return {
        "mse": (residual**2).mean((1, 2)),
        "max_abs": residual.max((1, 2)),
        "smoothed_max": smooth.max((1, 2)),
        "smoothed_mean": smooth.mean((1, 2)),
    }


def evaluate_pca(
    data: Path,
    out: Path,
    components: int = 100,
    limit: int | None = None,
    score_name: str = "smoothed_max",
    size: int = GRID,
) -> dict[str, Any]:
    """Fit PCA on the training normals of ``data`` (MIMIC layout), score its test split, write JSON."""
    samples = load_dataset(data, "mimic")
    test = [s for s in samples if s.split == "test"]
    if limit is not None:
        test = balanced_subset(test, limit)
    started = time.perf_counter()
    train = _grid(training_samples(samples), size)
    variants = pca_scores(train, _grid(test, size), components, size)
    y = [0 if s.normal else 1 for s in test]
    scores = variants[score_name].tolist()
    m = binary_metrics(y, scores)
    report = {
        "auroc": m.auroc,
        "ap": m.ap,
        "f1": m.f1,
        "sensitivity_at_95_specificity": m.sensitivity_at_95_specificity,
        "seconds_per_image": (time.perf_counter() - started) / len(test),
        "n_normal": y.count(0),
        "n_abnormal": y.count(1),
        "n_train": int(train.shape[0]),
        "per_finding_auroc": per_finding_auroc(test, scores),
        "score_variants_auroc": {k: float(roc_auc_score(y, v)) for k, v in sorted(variants.items())},
        "params": {"method": "pca", "components": components, "score_name": score_name, "image_size": size},
        "data": {"root": str(data), "split": "test"},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
