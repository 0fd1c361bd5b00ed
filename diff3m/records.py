"""Typed records passed between stages (EHR fetch -> inference -> outputs -> delivery)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

FieldValue = float | str | None


@dataclass(frozen=True)
class EhrRecord:
    """The EHR fields for one study, as the model consumes them.

    ``values`` maps every registry field name to its value in the field's canonical unit
    (numeric) or its category (categorical), or None when missing. ``sources`` says where
    each value came from (FHIR references such as ``Observation/123`` or DICOM keywords such
    as ``dicom:PatientAge``). ``available`` is False when the EHR could not be fetched at all
    (FHIR down, no patient match, ...); ``reason`` then says why. A partial EHR is available
    with some values None.
    """

    values: dict[str, FieldValue] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    available: bool = True
    reason: str | None = None

    @classmethod
    def unavailable(cls, reason: str, values: dict[str, FieldValue] | None = None) -> EhrRecord:
        """An EHR that could not be fetched; DICOM-derived ``values`` may still be given."""
        return cls(values=dict(values or {}), available=False, reason=reason)


@dataclass(frozen=True)
class Roi:
    """An axis-aligned box in source-image pixel coordinates (column, row, width, height)."""

    x: int
    y: int
    width: int
    height: int

    def as_dict(self) -> dict[str, int]:
        """Plain-data form for JSON / the database."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}


@dataclass
class ScoreResult:
    """What the model says about one image."""

    score: float  # the configured image score (higher = more anomalous)
    abnormal: bool
    threshold: float
    anomaly_map: np.ndarray  # float32, rows x columns of the *source* image, >= 0
    scores: dict[str, float]  # every score variant: mse, max_abs, smoothed_max, ...
    roi: Roi | None
    model_name: str
    model_version: str
    ehr_used: bool
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)  # steps, noise level, device, profile
