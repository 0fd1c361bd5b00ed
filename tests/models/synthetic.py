"""Synthetic chest-like images and a tiny trained checkpoint for model tests (and other areas' tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diff3m.models.data import CxrSample


def chest_like(rows: int, cols: int, rng: np.random.Generator, lesion: bool = False) -> np.ndarray:
    """A smooth two-lung pattern in [0, 1] with mild noise; ``lesion`` adds a bright blob."""
    yy, xx = np.mgrid[0:rows, 0:cols] / np.array([rows, cols])[:, None, None]
    img = 0.75 - 0.35 * np.exp(-((xx - 0.3) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
    img -= 0.35 * np.exp(-((xx - 0.7) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
    if lesion:
        img += 0.5 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.45) ** 2) / 0.004)
    img += 0.01 * rng.standard_normal((rows, cols))
    return np.clip(img, 0, 1).astype(np.float32)


def write_samples(root: Path, n: int = 8, seed: int = 0) -> list[CxrSample]:
    """``n`` normal PNG studies with EHR values (some missing) under ``root``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        path = root / f"s{i}.png"
        Image.fromarray((chest_like(40, 36, rng) * 255).astype(np.uint8)).save(path)
        values = {
            "sex": "M" if i % 2 else "F",
            "age": 30.0 + 5 * i,
            "view": "PA" if i % 3 else "AP",
            "bmi": None if i % 4 == 0 else 22.0 + i,
            "systolic": 110.0 + 2 * i,
            "diastolic": 70.0 + i,
            "height": 165.0 + i,
            "weight": 60.0 + 2 * i,
        }
        samples.append(
            CxrSample(
                path=path,
                values=values,
                normal=True,
                split="train" if i < n - 2 else "validate",
                study_id=f"{i}",
            )
        )
    return samples


def write_tiny_checkpoint(out: Path, steps: int = 6, use_ehr: bool = True) -> Path:
    """Train the tiny profile for a few steps (both stages) into ``out`` and return the checkpoint path."""
    from diff3m.models.train import train

    samples = write_samples(out / "images")
    return train(
        samples,
        out / "ckpt",
        profile="tiny",
        steps=steps,
        use_ehr=use_ehr,
        seed=0,
        calibration_images=2,
        progress=False,
    )
