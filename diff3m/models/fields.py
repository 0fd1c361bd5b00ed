"""The EHR field registry: what the model conditions on and where each field is found."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["numeric", "categorical"]
Group = Literal["demographics", "ehr"]


@dataclass(frozen=True)
class FieldSpec:
    """One EHR field: its kind, canonical UCUM unit and where to find it in each source."""

    name: str
    kind: Kind
    group: Group  # IECA pools demographics and EHR tokens separately
    unit: str = ""  # canonical UCUM unit of numeric fields ("" for categorical)
    categories: tuple[str, ...] = ()  # categorical values, in one-hot order
    loinc: tuple[str, ...] = ()  # FHIR Observation codes (standalone or as components)
    dicom: str = ""  # DICOM keyword used as a fallback source
    csv: tuple[str, ...] = ()  # column or MIMIC-IV omr result_name hints
    description: str = ""


PAPER_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("sex", "categorical", "demographics", categories=("F", "M"), dicom="PatientSex",
              csv=("gender", "Sex"), description="administrative sex (Patient.gender)"),
    FieldSpec("age", "numeric", "demographics", unit="a", dicom="PatientAge",
              csv=("anchor_age", "Age"), description="age in years at the study date"),
    FieldSpec("view", "categorical", "demographics", categories=("AP", "PA"), dicom="ViewPosition",
              csv=("ViewPosition", "AP/PA"), description="frontal projection"),
    FieldSpec("bmi", "numeric", "ehr", unit="kg/m2", loinc=("39156-5",), csv=("BMI (kg/m2)",),
              description="body mass index"),
    FieldSpec("systolic", "numeric", "ehr", unit="mm[Hg]", loinc=("8480-6",), csv=("Blood Pressure",),
              description="systolic blood pressure"),
    FieldSpec("diastolic", "numeric", "ehr", unit="mm[Hg]", loinc=("8462-4",), csv=("Blood Pressure",),
              description="diastolic blood pressure"),
    FieldSpec("height", "numeric", "ehr", unit="cm", loinc=("8302-2",), dicom="PatientSize",
              csv=("Height (Inches)",), description="body height"),
    FieldSpec("weight", "numeric", "ehr", unit="kg", loinc=("29463-7",), dicom="PatientWeight",
              csv=("Weight (Lbs)",), description="body weight"),
)

# Observation panels whose components carry registry fields (blood pressure panels).
PANEL_CODES: tuple[str, ...] = ("85354-9", "55284-4", "35094-2")


@dataclass(frozen=True)
class FieldRegistry:
    """An ordered set of fields; the order fixes token order in the network."""

    fields: tuple[FieldSpec, ...] = field(default=PAPER_FIELDS)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate field names in registry: {names}")

    @property
    def names(self) -> list[str]:
        """Field names in registry order."""
        return [f.name for f in self.fields]

    def get(self, name: str) -> FieldSpec:
        """The field called ``name``."""
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def group(self, group: Group) -> list[FieldSpec]:
        """The fields of one IECA group, in order."""
        return [f for f in self.fields if f.group == group]

    def by_loinc(self, code: str) -> list[FieldSpec]:
        """The fields an Observation (or component) with LOINC ``code`` fills."""
        return [f for f in self.fields if code in f.loinc]

    def with_extra(self, extra: list[FieldSpec]) -> FieldRegistry:
        """A registry with configured extra fields appended."""
        return FieldRegistry(self.fields + tuple(extra))


DEFAULT_REGISTRY = FieldRegistry()
