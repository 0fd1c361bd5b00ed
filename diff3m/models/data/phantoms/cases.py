"""Phantom cases: sample a patient's EHR, acquisition and findings, deterministically from a seed."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from diff3m.models.data.phantoms.anatomy import LUNG_LOBES, Anatomy

FindingKind = Literal["nodule", "consolidation", "effusion", "cardiomegaly"]
FINDING_KINDS: tuple[FindingKind, ...] = ("nodule", "consolidation", "effusion", "cardiomegaly")

# CheXpert label column written for each finding (per-finding AUROC reads these)
FINDING_LABELS: dict[str, str] = {
    "nodule": "Lung Lesion",
    "consolidation": "Consolidation",
    "effusion": "Pleural Effusion",
    "cardiomegaly": "Cardiomegaly",
}


@dataclass(frozen=True)
class HeartDesign:
    """How a phantom's normal heart scale follows its EHR, and how much larger cardiomegaly makes it.

    ``standard`` (what the demo is trained on): BMI and sex, both drawn into the image as habitus, set
    most of it; ``hidden-heart``: systolic pressure, which leaves no trace in the image of its own, sets
    a larger share and cardiomegaly is closer to normal, so only the EHR can tell many cases apart.
    """

    name: str
    bmi_slope: float = 0.011  # per kg/m2 from 25
    systolic_slope: float = 0.002  # per mmHg from 125
    sex_offset: tuple[float, float] = (-0.02, 0.03)  # F, M
    bounds: tuple[float, float] = (0.82, 1.25)  # of the expected scale
    cardiomegaly_extra: float = 0.20  # added to the expected scale


DESIGNS: dict[str, HeartDesign] = {
    "standard": HeartDesign("standard"),
    "hidden-heart": HeartDesign(
        "hidden-heart", systolic_slope=0.006, bounds=(0.75, 1.35), cardiomegaly_extra=0.12
    ),
}
STANDARD = DESIGNS["standard"]
CARDIOMEGALY_EXTRA = STANDARD.cardiomegaly_extra  # heart scale added to the patient's expected heart scale


@dataclass(frozen=True)
class PatientEhr:
    """The true EHR of a phantom patient (what drives the anatomy)."""

    sex: Literal["F", "M"]
    age: float  # years at the study
    height_cm: float
    weight_kg: float
    bmi: float
    systolic: float
    diastolic: float
    view: Literal["AP", "PA"]


@dataclass(frozen=True)
class Acquisition:
    """Geometry, exposure and detector response of one radiograph."""

    sid_mm: float  # source-to-detector distance
    rotation_deg: float  # about the patient's long axis
    tilt_deg: float  # lordotic tilt
    shift_mm: tuple[float, float]  # detector centre offset (x, z)
    photons: float  # incident photons per pixel
    scatter: float  # scatter-to-primary ratio
    blur_px: float  # detector blur (Gaussian sigma at 128 px)
    gamma: float  # display gamma
    window: tuple[float, float]  # jitter of the low / high window percentiles


@dataclass(frozen=True)
class Finding:
    """One focal (or EHR-relative) abnormality, placed in the CT frame (mm)."""

    kind: FindingKind
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size_mm: float = 0.0  # nodule radius, consolidation blob sigma, effusion height
    lobe: int = 0  # label code of the lobe it lives in (0 for none)
    offsets: tuple[tuple[float, float, float], ...] = ()  # consolidation sub-blobs


@dataclass(frozen=True)
class PhantomCase:
    """Everything needed to render one study and write its rows."""

    index: int
    subject_id: int
    study_id: int
    dicom_id: str
    ehr: PatientEhr
    acquisition: Acquisition
    heart_scale: float  # 1.0 = the CT patient's heart
    expected_heart_scale: float  # what is normal for this patient's EHR
    findings: tuple[Finding, ...] = field(default=())
    split: str = "train"

    @property
    def normal(self) -> bool:
        """True when the case has no finding."""
        return not self.findings

    @property
    def labels(self) -> tuple[str, ...]:
        """The CheXpert label columns that are positive."""
        return tuple(sorted({FINDING_LABELS[f.kind] for f in self.findings}))


def expected_heart_scale(ehr: PatientEhr, design: HeartDesign = STANDARD) -> float:
    """The normal heart size for a patient: larger with BMI, blood pressure and male sex."""
    d = design
    sex = d.sex_offset[1] if ehr.sex == "M" else d.sex_offset[0]
    s = 1.0 + d.bmi_slope * (ehr.bmi - 25.0) + d.systolic_slope * (ehr.systolic - 125.0) + sex
    return float(np.clip(s, *d.bounds))


def sample_ehr(rng: np.random.Generator, ap_fraction: float = 0.35) -> PatientEhr:
    """A plausible adult: sex, age, height, BMI -> weight, blood pressure, view."""
    sex: Literal["F", "M"] = "M" if rng.random() < 0.5 else "F"
    age = float(np.clip(rng.normal(60.0, 16.0), 19.0, 95.0))
    height = float(rng.normal(176.0, 7.0) if sex == "M" else rng.normal(163.0, 6.5))
    height = float(np.clip(height, 145.0, 205.0))
    bmi = float(np.clip(np.exp(rng.normal(np.log(27.0), 0.2)), 16.0, 48.0))
    weight = bmi * (height / 100.0) ** 2
    sys_bp = float(np.clip(rng.normal(122.0 + 0.4 * (age - 50.0) + 0.6 * (bmi - 27.0), 13.0), 85.0, 210.0))
    dia_bp = float(np.clip(rng.normal(76.0 + 0.3 * (bmi - 27.0), 8.0), 45.0, sys_bp - 20.0))
    view: Literal["AP", "PA"] = "AP" if rng.random() < ap_fraction else "PA"
    return PatientEhr(sex, age, height, weight, bmi, sys_bp, dia_bp, view)


def sample_acquisition(rng: np.random.Generator, ehr: PatientEhr) -> Acquisition:
    """Geometry and exposure: AP portable (short SID) vs PA erect (long SID), positioning, dose, noise."""
    sid = rng.normal(1000.0, 60.0) if ehr.view == "AP" else rng.normal(1800.0, 60.0)
    return Acquisition(
        sid_mm=float(sid),
        rotation_deg=float(rng.normal(0.0, 2.5)),
        tilt_deg=float(rng.normal(0.0, 2.0)),
        shift_mm=(float(rng.normal(0.0, 8.0)), float(rng.normal(0.0, 8.0))),
        photons=float(np.exp(rng.uniform(np.log(8e3), np.log(6e4)))),
        scatter=float(np.clip(0.25 + 0.015 * (ehr.bmi - 25.0) + rng.normal(0.0, 0.04), 0.1, 0.7)),
        blur_px=float(rng.uniform(0.5, 1.0)),
        gamma=float(rng.uniform(0.85, 1.15)),
        window=(float(rng.normal(0.0, 0.4)), float(rng.normal(0.0, 0.2))),
    )


_POINTS: dict[tuple[int, tuple[int, ...], int], np.ndarray] = {}


def _inner_points(anatomy: Anatomy, codes: tuple[int, ...], margin_vox: int) -> np.ndarray:
    """Coordinates of the voxels of ``codes`` at least ``margin_vox`` voxels inside (cached)."""
    from scipy import ndimage

    key = (id(anatomy), codes, margin_vox)
    if key not in _POINTS:
        mask = np.isin(anatomy.labels, codes)
        inner = ndimage.binary_erosion(mask, iterations=margin_vox) if margin_vox > 0 else mask
        _POINTS[key] = anatomy.voxel_mm_coords(inner if inner.any() else mask)
    return _POINTS[key]


def _lung_point(
    rng: np.random.Generator, anatomy: Anatomy, codes: tuple[int, ...], margin_vox: int
) -> tuple[float, float, float]:
    pts = _inner_points(anatomy, codes, margin_vox)
    p = pts[rng.integers(len(pts))]
    return float(p[0]), float(p[1]), float(p[2])


def sample_finding(rng: np.random.Generator, anatomy: Anatomy, kind: FindingKind) -> Finding:
    """Place one finding of ``kind`` with the lung and heart masks."""
    lobes = tuple(LUNG_LOBES.values())
    if kind == "nodule":
        radius = float(rng.uniform(10.0, 20.0))
        centre = _lung_point(rng, anatomy, lobes, margin_vox=max(2, int(radius / anatomy.voxel_mm)))
        return Finding("nodule", centre, radius)
    if kind == "consolidation":
        lobe = int(rng.choice(lobes))
        centre = _lung_point(rng, anatomy, (lobe,), margin_vox=3)
        sigma = float(rng.uniform(20.0, 32.0))
        offsets = tuple(tuple(float(v) for v in rng.normal(0.0, sigma * 0.8, 3)) for _ in range(3))
        return Finding("consolidation", centre, sigma, lobe, offsets)  # type: ignore[arg-type]
    if kind == "effusion":
        lobe = LUNG_LOBES["lung_lower_left"] if rng.random() < 0.5 else LUNG_LOBES["lung_lower_right"]
        pts = _inner_points(anatomy, (lobe,), 0)
        lo, hi = float(pts[:, 2].min()), float(pts[:, 2].max())
        level = lo + float(rng.uniform(0.35, 0.65)) * (hi - lo)
        cx = float(pts[:, 0].mean())
        return Finding("effusion", (cx, 0.0, level), level - lo, lobe)
    return Finding("cardiomegaly")


def dicom_id_for(seed: int, index: int) -> str:
    """A MIMIC-style DICOM id (five dash-separated 8-hex groups), stable for (seed, index)."""
    h = hashlib.sha1(f"diff3m-phantom:{seed}:{index}".encode()).hexdigest()
    return "-".join(h[i : i + 8] for i in range(0, 40, 8))


def make_case(
    seed: int, index: int, abnormal: bool, split: str, anatomy: Anatomy, design: HeartDesign = STANDARD
) -> PhantomCase:
    """Case ``index`` of dataset ``seed``: the same arguments always give the same case."""
    rng = np.random.default_rng([seed, index])
    ehr = sample_ehr(rng)
    acq = sample_acquisition(rng, ehr)
    expected = expected_heart_scale(ehr, design)
    heart = float(np.clip(expected + rng.normal(0.0, 0.02), design.bounds[0] - 0.02, design.bounds[1] + 0.05))
    findings: tuple[Finding, ...] = ()
    if abnormal:
        first = FINDING_KINDS[int(rng.integers(len(FINDING_KINDS)))]
        kinds = [first]
        if rng.random() < 0.15:
            others = [k for k in FINDING_KINDS if k != first]
            kinds.append(others[int(rng.integers(len(others)))])
        findings = tuple(sample_finding(rng, anatomy, k) for k in kinds)
        if "cardiomegaly" in kinds:
            heart = float(min(expected + design.cardiomegaly_extra + abs(rng.normal(0.0, 0.03)), 1.5))
    return PhantomCase(
        index=index,
        subject_id=19_000_000 + index,
        study_id=59_000_000 + index,
        dicom_id=dicom_id_for(seed, index),
        ehr=ehr,
        acquisition=acq,
        heart_scale=heart,
        expected_heart_scale=expected,
        findings=findings,
        split=split,
    )
