"""The phantom anatomy: the committed chest-CT asset as tensors, plus the landmarks the generator uses."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

ASSET = Path(__file__).with_name("assets") / "chest_ct_3mm.npz"

LUNG_LOBES = {
    "lung_upper_left": 1,
    "lung_lower_left": 2,
    "lung_upper_right": 3,
    "lung_middle_right": 4,
    "lung_lower_right": 5,
}
HEART = 6
BODY = 7


@dataclass(frozen=True)
class Anatomy:
    """The attenuation volume (1/mm) and labels of one real chest, in a patient frame centred on the grid.

    Axes: x to the patient's left, y anterior, z superior (mm). Tensors are laid out (z, y, x) as
    ``torch.nn.functional.grid_sample`` expects for (D, H, W).
    """

    soft: torch.Tensor  # (1, 1, D, H, W) float32 soft-tissue attenuation
    bone: torch.Tensor  # (1, 1, D, H, W) float32 bone excess attenuation
    labels: np.ndarray  # (X, Y, Z) uint8 label codes
    voxel_mm: float
    half_extent: tuple[float, float, float]  # mm from the grid centre to the outermost voxel centre (x, y, z)
    lung_centre: tuple[float, float, float]
    cage_semi_axes: tuple[float, float]  # rib-cage ellipse in the axial plane (lateral, AP), mm
    cage_centre: tuple[float, float]
    heart_centre: tuple[float, float, float]
    heart_radius: float
    body_y: tuple[float, float]  # posterior and anterior body surface (mm)

    def voxel_mm_coords(self, mask: np.ndarray) -> np.ndarray:
        """Patient-frame mm coordinates (N, 3) of the voxels where ``mask`` is true."""
        idx = np.argwhere(mask).astype(np.float32)
        centre = (np.array(self.labels.shape, dtype=np.float32) - 1.0) / 2.0
        return (idx - centre) * self.voxel_mm

    def mask_tensor(self, codes: tuple[int, ...]) -> torch.Tensor:
        """A (1, 1, D, H, W) float32 indicator of the given label codes."""
        m = np.isin(self.labels, codes).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(m.transpose(2, 1, 0)))[None, None]


@lru_cache(maxsize=2)
def load_anatomy(path: Path = ASSET) -> Anatomy:
    """Load the asset (cached): dequantise attenuation and derive landmarks from the labels."""
    with np.load(path) as npz:
        soft = npz["soft"].astype(np.float32) * (float(npz["soft_max"]) / 255.0)
        bone = npz["bone"].astype(np.float32) * (float(npz["bone_max"]) / 255.0)
        labels = npz["labels"].copy()
        voxel = float(npz["voxel_mm"])
    shape = np.array(labels.shape, dtype=np.float32)
    half = tuple(float(v) for v in (shape - 1.0) / 2.0 * voxel)
    centre = (shape - 1.0) / 2.0

    def coords(mask: np.ndarray) -> np.ndarray:
        return (np.argwhere(mask).astype(np.float32) - centre) * voxel

    lung = coords((labels >= 1) & (labels <= 5))
    heart = coords(labels == HEART)
    body = coords(labels > 0)
    lung_lo, lung_hi = lung.min(0), lung.max(0)
    cage_centre = ((lung_lo[0] + lung_hi[0]) / 2.0, (lung_lo[1] + lung_hi[1]) / 2.0)
    cage_axes = ((lung_hi[0] - lung_lo[0]) / 2.0 + 12.0, (lung_hi[1] - lung_lo[1]) / 2.0 + 12.0)
    heart_radius = float((3.0 * len(heart) * voxel**3 / (4.0 * np.pi)) ** (1.0 / 3.0))

    def to_tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 1, 0)))[None, None]

    return Anatomy(
        soft=to_tensor(soft),
        bone=to_tensor(bone),
        labels=labels,
        voxel_mm=voxel,
        half_extent=(half[0], half[1], half[2]),
        lung_centre=tuple(float(v) for v in lung.mean(0)),  # type: ignore[arg-type]
        cage_semi_axes=(float(cage_axes[0]), float(cage_axes[1])),
        cage_centre=(float(cage_centre[0]), float(cage_centre[1])),
        heart_centre=tuple(float(v) for v in heart.mean(0)),  # type: ignore[arg-type]
        heart_radius=heart_radius,
        body_y=(float(body[:, 1].min()), float(body[:, 1].max())),
    )
