"""Render a phantom case: warp the CT for this patient, cone-beam project it, and model the detector."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from diff3m.models.data.phantoms.anatomy import BODY, HEART, Anatomy, load_anatomy
from diff3m.models.data.phantoms.cases import PhantomCase

MU_FLUID = 0.0205  # 1/mm: effusion
MU_NODULE = 0.024  # solid nodule, a little denser than water
MU_CONSOLIDATION = 0.019
MU_BREAST = 0.0185
FOV_MM = 400.0  # detector field of view (square)
STEP_MM = 4.0  # sampling step along each ray (in y)
REFERENCE_HEIGHT_CM = 170.0
REFERENCE_BMI = 24.0
HEART_INNER = 1.5  # heart warp: full magnification within this many sphere-equivalent heart radii
HEART_OUTER = 2.3  # ... and none beyond this many

_MASKS: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}


@dataclass
class Rendered:
    """One rendered radiograph in [0, 1] (rows superior -> inferior, patient's right on the left)."""

    image: np.ndarray  # float32 (size, size)
    heart: np.ndarray | None = None  # bool (size, size): projection of the heart, when asked for
    body: np.ndarray | None = None  # bool (size, size): projection of the body, when asked for
    pixel_mm: float = 0.0  # detector pixel size


def _mask(anatomy: Anatomy, codes: tuple[int, ...]) -> torch.Tensor:
    key = (id(anatomy), codes)
    if key not in _MASKS:
        _MASKS[key] = anatomy.mask_tensor(codes)
    return _MASKS[key]


def _sample(volume: torch.Tensor, q: torch.Tensor, anatomy: Anatomy) -> torch.Tensor:
    """Trilinear samples of a (1, C, D, H, W) volume at mm points q (..., 3) -> (C, ...)."""
    hx, hy, hz = anatomy.half_extent
    scale = torch.tensor([1.0 / hx, 1.0 / hy, 1.0 / hz], dtype=q.dtype)
    grid = (q * scale).reshape(1, 1, -1, 1, 3)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.reshape(volume.shape[1], *q.shape[:-1])


def _rotation(rotation_deg: float, tilt_deg: float) -> torch.Tensor:
    a, b = math.radians(rotation_deg), math.radians(tilt_deg)
    rz = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = torch.tensor([[1.0, 0.0, 0.0], [0.0, math.cos(b), -math.sin(b)], [0.0, math.sin(b), math.cos(b)]])
    return rz @ rx


def habitus_factors(case: PhantomCase) -> tuple[float, float, float]:
    """(long-axis scale, axial scale, soft-tissue thickness scale) from height and BMI."""
    s_z = float(np.clip(case.ehr.height_cm / REFERENCE_HEIGHT_CM, 0.85, 1.2))
    s_fat = float(np.clip(1.0 + 0.07 * (case.ehr.bmi - REFERENCE_BMI), 0.6, 2.4))
    return s_z, math.sqrt(s_z), s_fat


def bone_factor(case: PhantomCase) -> float:
    """Bone attenuation relative to the CT patient: density falls with age, faster in women."""
    f = 1.25 - 0.007 * (case.ehr.age - 20.0)
    if case.ehr.sex == "F" and case.ehr.age > 50.0:
        f -= 0.004 * (case.ehr.age - 50.0)
    return float(np.clip(f, 0.55, 1.3))


def _to_ct_frame(p: torch.Tensor, case: PhantomCase, anatomy: Anatomy) -> torch.Tensor:
    """Map world points to CT-frame points: undo pose, habitus and heart size (inverse warps)."""
    lc = torch.tensor(anatomy.lung_centre)
    rot = _rotation(case.acquisition.rotation_deg, case.acquisition.tilt_deg)
    s_z, s_xy, s_fat = habitus_factors(case)
    # undo the pose (R^T (p - c), as row vectors (p - c) R) and the body size, in one affine map
    affine = rot / torch.tensor([s_xy, s_xy, s_z])[None, :]
    flat = p.reshape(-1, 3)
    q = torch.addmm(lc - lc @ affine, flat, affine).reshape(p.shape)
    # subcutaneous soft tissue: stretch everything outside the rib-cage ellipse radially
    cx, cy = anatomy.cage_centre
    a, b = anatomy.cage_semi_axes
    dx, dy = q[..., 0] - cx, q[..., 1] - cy
    rho = torch.sqrt((dx / a) ** 2 + (dy / b) ** 2).clamp_min(1e-6)
    factor = torch.where(rho > 1.0, (1.0 + (rho - 1.0) / s_fat) / rho, torch.ones_like(rho))
    q = torch.stack([cx + dx * factor, cy + dy * factor, q[..., 2]], dim=-1)
    # heart: magnify by heart_scale out to its borders, blend back to identity further out
    h = torch.tensor(anatomy.heart_centre)
    d = q - h
    r = torch.linalg.vector_norm(d, dim=-1) / (HEART_INNER * anatomy.heart_radius)
    span = HEART_OUTER / HEART_INNER - 1.0
    w = torch.where(r <= 1.0, torch.ones_like(r), 0.5 * (1.0 + torch.cos(math.pi * (r - 1.0) / span)))
    w = torch.where(r >= 1.0 + span, torch.zeros_like(r), w)
    return q - (1.0 - 1.0 / case.heart_scale) * d * w[..., None]


def _add_findings(
    soft: torch.Tensor, q: torch.Tensor, case: PhantomCase, anatomy: Anatomy, lobes: dict[int, torch.Tensor]
) -> torch.Tensor:
    """Add findings (nodule, consolidation, effusion) and breast tissue to the soft-tissue samples."""
    if case.ehr.sex == "F":
        a, b = anatomy.cage_semi_axes
        cx, cy = anatomy.cage_centre
        size = math.sqrt(case.ehr.bmi / 25.0)
        radii = torch.tensor([55.0, 45.0, 50.0]) * size
        rho = torch.sqrt(((q[..., 0] - cx) / a) ** 2 + ((q[..., 1] - cy) / b) ** 2)
        for side in (-1.0, 1.0):
            c = torch.tensor([cx + side * 0.45 * a, anatomy.body_y[1] - 15.0, anatomy.heart_centre[2] - 20.0])
            e = torch.sqrt((((q - c) / radii) ** 2).sum(-1))
            w = ((1.0 - e) / 0.15).clamp(0.0, 1.0) * (rho > 1.0)
            soft = soft + w * (MU_BREAST - soft).clamp_min(0.0)
    for f in case.findings:
        c = torch.tensor(f.centre)
        if f.kind == "nodule":
            dist = torch.linalg.vector_norm(q - c, dim=-1)
            w = ((f.size_mm - dist) / 1.5 + 0.5).clamp(0.0, 1.0)
            soft = soft + w * (MU_NODULE - soft).clamp_min(0.0)
        elif f.kind == "consolidation":
            acc = torch.zeros_like(soft)
            for off in ((0.0, 0.0, 0.0), *f.offsets):
                d2 = ((q - (c + torch.tensor(off))) ** 2).sum(-1)
                acc = acc + torch.exp(-d2 / (2.0 * f.size_mm**2))
            w = (acc * 2.0 - 0.3).clamp(0.0, 0.95) * lobes[f.lobe]
            soft = soft + w * (MU_CONSOLIDATION - soft).clamp_min(0.0)
        elif f.kind == "effusion":
            lateral = (q[..., 0].abs() - abs(f.centre[0])).clamp_min(0.0)
            level = f.centre[2] + 0.6 * lateral  # meniscus rising laterally
            w = torch.sigmoid((level - q[..., 2]) / 3.0) * lobes[f.lobe]
            soft = soft + w * (MU_FLUID - soft).clamp_min(0.0)
    return soft


def line_integrals(
    case: PhantomCase, size: int, anatomy: Anatomy, with_masks: bool = False, fov_mm: float = FOV_MM
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, float]:
    """Cone-beam line integrals of attenuation (size x size), optionally heart and body projections."""
    acq = case.acquisition
    y_lo, y_hi = anatomy.body_y[0] - 70.0, anatomy.body_y[1] + 70.0
    if case.ehr.view == "PA":  # source behind, detector in front of the chest
        y_det = anatomy.body_y[1] + 40.0
        y_src = y_det - acq.sid_mm
        ys = torch.arange(y_lo, min(y_det, y_hi), STEP_MM)
    else:  # AP: source in front, detector behind
        y_det = anatomy.body_y[0] - 40.0
        y_src = y_det + acq.sid_mm
        ys = torch.arange(max(y_det, y_lo), y_hi, STEP_MM)
    pixel = fov_mm / size
    coords = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2.0) * pixel
    cx = anatomy.lung_centre[0] + acq.shift_mm[0]
    cz = anatomy.lung_centre[2] + acq.shift_mm[1]
    det_x = (cx + coords)[None, :].expand(size, size)  # columns: patient's right -> left
    det_z = (cz - coords)[:, None].expand(size, size)  # rows: superior -> inferior
    frac = ((ys - y_src) / (y_det - y_src))[:, None, None]
    pts = torch.stack(
        [cx + frac * (det_x - cx), ys[:, None, None].expand(-1, size, size), cz + frac * (det_z - cz)], dim=-1
    )
    q = _to_ct_frame(pts, case, anatomy)
    # one trilinear pass over every channel this case needs
    lobe_codes = sorted({f.lobe for f in case.findings if f.kind in ("consolidation", "effusion")})
    channels = [anatomy.soft, anatomy.bone] + [_mask(anatomy, (code,)) for code in lobe_codes]
    if with_masks:
        channels += [_mask(anatomy, (HEART,)), _mask(anatomy, tuple(range(1, BODY + 1)))]
    samples = _sample(torch.cat(channels, dim=1), q, anatomy)
    lobes = {code: samples[2 + i] for i, code in enumerate(lobe_codes)}
    soft = _add_findings(samples[0], q, case, anatomy, lobes)
    mu = soft + bone_factor(case) * samples[1]
    ray_len = torch.sqrt((det_x - cx) ** 2 + (det_z - cz) ** 2 + (y_det - y_src) ** 2) / abs(y_det - y_src)
    step = STEP_MM * ray_len
    proj = (mu.sum(0) * step).numpy().astype(np.float32)
    heart = body = None
    if with_masks:
        heart = ((samples[-2].sum(0) * step) > 6.0).numpy()
        body = ((samples[-1].sum(0) * step) > 6.0).numpy()
    return proj, heart, body, pixel


def detector(proj: np.ndarray, case: PhantomCase, seed: int) -> np.ndarray:
    """Quantum noise, scatter, blur, log transform and display window -> [0, 1] image."""
    acq = case.acquisition
    rng = np.random.default_rng([seed, case.index, 7])
    size = proj.shape[0]
    primary = acq.photons * np.exp(-proj.astype(np.float64))
    primary = ndimage.gaussian_filter(primary, acq.blur_px * size / 128.0)
    signal = primary + acq.scatter * primary.mean()
    noisy = np.maximum(signal + np.sqrt(signal) * rng.standard_normal(signal.shape), 1.0)
    log = -np.log(noisy / acq.photons)
    lo = np.percentile(log, 1.0 + abs(acq.window[0]))
    hi = np.percentile(log, 99.5 - abs(acq.window[1]))
    img = np.clip((log - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** acq.gamma
    return img.astype(np.float32)


def render(
    case: PhantomCase, size: int, seed: int, with_masks: bool = False, fov_mm: float = FOV_MM
) -> Rendered:
    """Render ``case`` as a size x size radiograph (deterministic for case and seed)."""
    anatomy = load_anatomy()
    with torch.no_grad():
        proj, heart, body, pixel = line_integrals(case, size, anatomy, with_masks, fov_mm)
    return Rendered(detector(proj, case, seed), heart, body, pixel)
