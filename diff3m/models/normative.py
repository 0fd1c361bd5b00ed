"""Normal residual statistics: how much the model misses, pixel by pixel, on normal images.

Some anatomy is always reconstructed less well than the rest (rib and heart borders, the diaphragm, the
body outline), so a raw residual map lights up there on every image. The checkpoint keeps the mean and
spread of the smoothed residual map over normal training images (model grid); ``normalized_max`` scores
an image by its largest residual in units of that spread, which ranks unusual residuals, not usual ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

STATS_FILE = "residual_stats.safetensors"
STD_FLOOR = 1e-3  # residuals are on the [0, 1] intensity scale: keeps flat regions from dividing by ~0


@dataclass(frozen=True)
class ResidualStats:
    """Per-pixel mean and standard deviation of smoothed residual maps of normal images [S, S]."""

    mean: np.ndarray
    std: np.ndarray
    n: int

    @classmethod
    def fit(cls, maps: np.ndarray) -> ResidualStats:
        """Statistics of a stack of smoothed residual maps [N, S, S] (N >= 2)."""
        if maps.ndim != 3 or maps.shape[0] < 2:
            raise ValueError(f"need at least 2 residual maps [N, S, S], got shape {maps.shape}")
        m = maps.astype(np.float64)
        return cls(m.mean(0).astype(np.float32), m.std(0).astype(np.float32), int(maps.shape[0]))

    def z(self, smooth: np.ndarray) -> np.ndarray:
        """A smoothed residual map [S, S] in units of the normal spread at each pixel."""
        if smooth.shape != self.mean.shape:
            raise ValueError(f"residual map {smooth.shape} does not match the statistics {self.mean.shape}")
        return (smooth - self.mean) / (self.std + STD_FLOOR)

    def save(self, ckpt_dir: Path) -> Path:
        """Write ``residual_stats.safetensors`` into a checkpoint directory (atomically)."""
        path = Path(ckpt_dir) / STATS_FILE
        tmp = path.with_suffix(".tmp")
        tensors = {"mean": torch.from_numpy(self.mean), "std": torch.from_numpy(self.std)}
        save_file(tensors, str(tmp), metadata={"n": str(self.n)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, ckpt_dir: Path) -> ResidualStats | None:
        """The statistics of a checkpoint directory, or None when it has none."""
        path = Path(ckpt_dir) / STATS_FILE
        if not path.is_file():
            return None
        with safe_open(str(path), "pt") as f:
            n = int((f.metadata() or {}).get("n", "0"))
        t = load_file(str(path))
        return cls(t["mean"].numpy(), t["std"].numpy(), n)
