"""EHR encoding: registry fields -> normalised token values + presence mask (missing never drops a study)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from diff3m.models.fields import DEFAULT_REGISTRY, FieldRegistry, FieldSpec
from diff3m.records import FieldValue


@dataclass(frozen=True)
class NumericStats:
    """Training-set mean and standard deviation of one numeric field."""

    mean: float
    std: float
    count: int = 0


@dataclass(frozen=True)
class EncodedEhr:
    """One study's token values (z-scored numbers, one-hot categories) and which tokens are present."""

    values: np.ndarray  # float32 [n_tokens]
    present: np.ndarray  # bool [n_tokens]


@dataclass
class EhrEncoder:
    """Maps registry field values to token values; one token per numeric field, one per category."""

    registry: FieldRegistry = field(default_factory=lambda: DEFAULT_REGISTRY)
    stats: dict[str, NumericStats] = field(default_factory=dict)

    @property
    def token_names(self) -> list[str]:
        """Token names in network order (``field`` or ``field=category``)."""
        names: list[str] = []
        for spec in self.registry.fields:
            if spec.kind == "numeric":
                names.append(spec.name)
            else:
                names.extend(f"{spec.name}={c}" for c in spec.categories)
        return names

    @property
    def n_tokens(self) -> int:
        """How many tokens a study becomes."""
        return len(self.token_names)

    def spans(self) -> list[tuple[FieldSpec, int, int]]:
        """Each registry field with its first token index and its number of tokens, in network order."""
        out: list[tuple[FieldSpec, int, int]] = []
        i = 0
        for spec in self.registry.fields:
            width = 1 if spec.kind == "numeric" else len(spec.categories)
            out.append((spec, i, width))
            i += width
        return out

    def group_indices(self) -> dict[str, list[int]]:
        """Token indices of each IECA group (demographics, ehr), pooled separately."""
        groups: dict[str, list[int]] = {"demographics": [], "ehr": []}
        for spec, i, width in self.spans():
            groups.setdefault(spec.group, []).extend(range(i, i + width))
        return groups

    def fit(self, records: Iterable[Mapping[str, FieldValue]]) -> EhrEncoder:
        """Compute z-score statistics of every numeric field from training records (missing skipped)."""
        seen: dict[str, list[float]] = {s.name: [] for s in self.registry.fields if s.kind == "numeric"}
        for values in records:
            for name, bucket in seen.items():
                v = as_number(values.get(name))
                if v is not None:
                    bucket.append(v)
        stats: dict[str, NumericStats] = {}
        for name, bucket in seen.items():
            if bucket:
                arr = np.asarray(bucket, dtype=np.float64)
                std = float(arr.std())
                stats[name] = NumericStats(float(arr.mean()), std if std > 1e-6 else 1.0, len(bucket))
            else:
                stats[name] = NumericStats(0.0, 1.0, 0)
        self.stats = stats
        return self

    def encode(self, values: Mapping[str, FieldValue]) -> EncodedEhr:
        """Token values and presence for one study; unknown categories and bad numbers count as missing."""
        out = np.zeros(self.n_tokens, dtype=np.float32)
        present = np.zeros(self.n_tokens, dtype=bool)
        for spec, i, width in self.spans():
            raw = values.get(spec.name)
            if spec.kind == "numeric":
                v = as_number(raw)
                if v is not None:
                    st = self.stats.get(spec.name, NumericStats(0.0, 1.0))
                    out[i] = (v - st.mean) / st.std
                    present[i] = True
            else:
                k = match_category(spec, raw)
                if k is not None:
                    out[i + k] = 1.0
                    present[i : i + width] = True
        return EncodedEhr(out, present)

    def encode_batch(self, batch: Sequence[Mapping[str, FieldValue]]) -> tuple[np.ndarray, np.ndarray]:
        """Stacked token values [B, n] and presence [B, n]."""
        enc = [self.encode(v) for v in batch]
        if not enc:
            return np.zeros((0, self.n_tokens), np.float32), np.zeros((0, self.n_tokens), bool)
        return np.stack([e.values for e in enc]), np.stack([e.present for e in enc])

    def population_reference(self, values: np.ndarray, group: str = "ehr") -> np.ndarray:
        """Token values [B, n] with every numeric field of ``group`` at the training mean (z = 0).

        What EHR guidance contrasts a patient's record with: the same study, demographics and presence,
        but an average patient's measurements. Missing fields keep their missing token on both sides.
        """
        out = np.array(values, dtype=np.float32, copy=True)
        for spec, i, _ in self.spans():
            if spec.kind == "numeric" and spec.group == group:
                out[..., i] = 0.0
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for config.json (fields and normalisation statistics)."""
        return {
            "fields": [field_to_dict(s) for s in self.registry.fields],
            "stats": {k: asdict(v) for k, v in self.stats.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EhrEncoder:
        """Rebuild from config.json."""
        specs = tuple(field_from_dict(d) for d in data["fields"])
        stats = {k: NumericStats(**v) for k, v in data.get("stats", {}).items()}
        return cls(FieldRegistry(specs), stats)


def as_number(value: FieldValue) -> float | None:
    """A finite float, or None for missing / unparsable / non-finite values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def match_category(spec: FieldSpec, value: FieldValue) -> int | None:
    """Index of ``value`` among the field's categories (exact, then unique prefix, case-insensitive)."""
    if value is None:
        return None
    text = str(value).strip().upper()
    if not text:
        return None
    cats = [c.upper() for c in spec.categories]
    if text in cats:
        return cats.index(text)
    hits = [i for i, c in enumerate(cats) if text.startswith(c)]
    return hits[0] if len(hits) == 1 else None


def field_to_dict(spec: FieldSpec) -> dict[str, Any]:
    """A field spec as plain data."""
    return asdict(spec)


def field_from_dict(data: Mapping[str, Any]) -> FieldSpec:
    """A field spec from plain data (lists become tuples)."""
    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return FieldSpec(**values)


def values_from_dicom(ds: Any, registry: FieldRegistry = DEFAULT_REGISTRY) -> dict[str, FieldValue]:
    """Registry values that the DICOM header itself carries (age, sex, view, height, weight)."""
    out: dict[str, FieldValue] = {name: None for name in registry.names}
    for spec in registry.fields:
        if not spec.dicom:
            continue
        raw = getattr(ds, spec.dicom, None)
        if raw in (None, ""):
            continue
        if spec.dicom == "PatientAge":
            out[spec.name] = _dicom_age_years(str(raw))
        elif spec.dicom == "PatientSize":  # metres -> cm
            v = as_number(raw)
            out[spec.name] = v * 100.0 if v else None
        elif spec.dicom == "PatientWeight":  # kg
            v = as_number(raw)
            out[spec.name] = v if v else None
        else:
            out[spec.name] = str(raw)
    return out


def _dicom_age_years(text: str) -> float | None:
    """DICOM AS (``063Y``, ``018M``, ``004W``, ``010D``) in years."""
    text = text.strip().upper()
    if len(text) < 2 or not text[:-1].isdigit():
        return None
    n = float(text[:-1])
    return {"Y": n, "M": n / 12.0, "W": n / 52.1775, "D": n / 365.25}.get(text[-1])
