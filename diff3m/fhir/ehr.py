"""EHR pull: a study's patient and LOINC Observations from FHIR mapped onto the model's field registry."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient

from diff3m.config import Settings
from diff3m.fhir.client import FhirClient
from diff3m.fhir.errors import FhirError
from diff3m.fhir.patient import match_patient
from diff3m.fhir.units import UnitError, convert
from diff3m.models.fields import DEFAULT_REGISTRY, PANEL_CODES, FieldRegistry, FieldSpec
from diff3m.records import EhrRecord, FieldValue

log = logging.getLogger(__name__)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
USABLE_STATUSES = frozenset({"final", "amended", "corrected", "preliminary"})
GENDER = {"male": "M", "female": "F"}
_AS_RE = re.compile(r"^(\d{3})([DWMY])$")


def _text(ds: Any, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element must not stop the EHR pull
        return None
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _number(ds: Any, keyword: str) -> float | None:
    text = _text(ds, keyword)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_da(value: str | None) -> date | None:
    """A DICOM DA (YYYYMMDD) as a date; None when missing or malformed."""
    if not value:
        return None
    try:
        return datetime.strptime(value.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def age_from_as(value: str | None) -> float | None:
    """Years from a DICOM AS string such as '065Y', '006M', '010W', '020D'; None when malformed."""
    m = _AS_RE.match((value or "").strip().upper())
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return round({"Y": n, "M": n / 12, "W": n * 7 / 365.25, "D": n / 365.25}[unit], 4)


def age_at(birth: date, on: date) -> int:
    """Completed years between ``birth`` and ``on``."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


@dataclass(frozen=True)
class StudyContext:
    """What the EHR pull needs to know about a study (from its DICOM header)."""

    patient_id: str | None
    issuer: str | None = None
    study_date: date | None = None
    accession: str | None = None
    sex: str | None = None  # DICOM PatientSex (M, F, O)
    age: str | None = None  # DICOM PatientAge (AS, e.g. '065Y')
    birth_date: date | None = None  # DICOM PatientBirthDate
    view: str | None = None  # DICOM ViewPosition (AP, PA, LL, ...)
    size_m: float | None = None  # DICOM PatientSize (m)
    weight_kg: float | None = None  # DICOM PatientWeight (kg)
    study_uid: str | None = None

    @classmethod
    def from_dataset(cls, ds: Any) -> StudyContext:
        """The context of a pydicom Dataset's study; malformed values become None."""
        return cls(
            patient_id=_text(ds, "PatientID"),
            issuer=_text(ds, "IssuerOfPatientID"),
            study_date=parse_da(_text(ds, "StudyDate")),
            accession=_text(ds, "AccessionNumber"),
            sex=_text(ds, "PatientSex"),
            age=_text(ds, "PatientAge"),
            birth_date=parse_da(_text(ds, "PatientBirthDate")),
            view=_text(ds, "ViewPosition"),
            size_m=_number(ds, "PatientSize"),
            weight_kg=_number(ds, "PatientWeight"),
            study_uid=_text(ds, "StudyInstanceUID"),
        )

    @property
    def reference_date(self) -> date:
        """The date EHR values are matched to: the study date, today when the study has none."""
        return self.study_date or date.today()


def registry_for(settings: Settings, base: FieldRegistry = DEFAULT_REGISTRY) -> FieldRegistry:
    """The model's registry plus the numeric fields configured in ``fhir.extra_fields``."""
    known = set(base.names)
    extra = []
    for f in settings.fhir.extra_fields:
        if f.name in known:
            log.warning("fhir.extra_fields: %r is already a registry field; ignored", f.name)
            continue
        known.add(f.name)
        extra.append(FieldSpec(f.name, "numeric", "ehr", unit=f.unit, loinc=(f.loinc,),
                               description=f"configured extra field (LOINC {f.loinc})"))
    return base.with_extra(extra) if extra else base


# --- DICOM fallback ----------------------------------------------------------------------


def _categorical(spec: FieldSpec, value: str | None) -> str | None:
    v = (value or "").strip().upper()
    return v if v in spec.categories else None


def dicom_values(ctx: StudyContext, registry: FieldRegistry) -> dict[str, tuple[FieldValue, str]]:
    """Field values the DICOM header gives (field -> (value, source)), in canonical units."""
    raw: dict[str, tuple[Any, str]] = {}
    age = age_from_as(ctx.age)
    if age is None and ctx.birth_date and ctx.study_date and ctx.birth_date <= ctx.study_date:
        raw["PatientAge"] = (age_at(ctx.birth_date, ctx.study_date), "a")
        age_source = "dicom:PatientBirthDate"
    else:
        raw["PatientAge"] = (age, "a")
        age_source = "dicom:PatientAge"
    raw["PatientSex"] = (ctx.sex, "")
    raw["ViewPosition"] = (ctx.view, "")
    raw["PatientSize"] = (ctx.size_m if ctx.size_m and ctx.size_m > 0 else None, "m")
    raw["PatientWeight"] = (ctx.weight_kg if ctx.weight_kg and ctx.weight_kg > 0 else None, "kg")
    out: dict[str, tuple[FieldValue, str]] = {}
    for spec in registry.fields:
        if not spec.dicom or spec.dicom not in raw:
            continue
        value, unit = raw[spec.dicom]
        if value is None:
            continue
        source = age_source if spec.dicom == "PatientAge" else f"dicom:{spec.dicom}"
        if spec.kind == "categorical":
            cat = _categorical(spec, str(value))
            if cat is not None:
                out[spec.name] = (cat, source)
        else:
            try:
                out[spec.name] = (round(convert(float(value), unit, spec.unit), 4) if spec.unit and unit
                                  else float(value), source)
            except UnitError:
                continue
    return out


# --- FHIR ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """One value for a field from one Observation, with its distance to the study date."""

    field: str
    value: float
    days: int
    source: str


def observation_date(obs: Observation) -> date | None:
    """The clinically relevant date of an Observation (effective[x], else issued)."""
    for value in (obs.effectiveDateTime, obs.effectiveInstant,
                  obs.effectivePeriod.start if obs.effectivePeriod else None, obs.issued):
        if isinstance(value, datetime):
            return value.date()
        if isinstance(value, date):
            return value
        if isinstance(value, str) and re.match(r"^\d{4}-\d{2}-\d{2}", value):
            return date.fromisoformat(value[:10])
    return None


def _loinc_codes(concept: Any) -> list[str]:
    if concept is None:
        return []
    return [str(c.code) for c in (concept.coding or []) if c.system == LOINC and c.code]


def _quantity(q: Any, spec: FieldSpec) -> float | None:
    if q is None or q.value is None:
        return None
    value = float(q.value)
    if not spec.unit:
        return value
    unit = q.code if q.code and (q.system in (None, UCUM)) else q.unit
    if not unit:
        return None
    try:
        return round(convert(value, str(unit), spec.unit), 4)
    except UnitError:
        return None


def candidates(obs: Observation, registry: FieldRegistry, study_date: date) -> list[Candidate]:
    """The field values one Observation carries (itself or its components), in canonical units."""
    if str(obs.status) not in USABLE_STATUSES:
        return []
    when = observation_date(obs)
    if when is None:
        return []
    days = abs((when - study_date).days)
    source = f"Observation/{obs.id}"
    out: list[Candidate] = []
    parts = [(obs.code, obs.valueQuantity)] + [(c.code, c.valueQuantity) for c in obs.component or []]
    for concept, quantity in parts:
        for code in _loinc_codes(concept):
            for spec in registry.by_loinc(code):
                if spec.kind != "numeric":
                    continue
                value = _quantity(quantity, spec)
                if value is not None:
                    out.append(Candidate(spec.name, value, days, source))
    return out


def choose(cands: list[Candidate], window_days: int) -> tuple[float, list[str]] | None:
    """The value closest to the study date within the window (ties averaged) and its sources."""
    inside = [c for c in cands if c.days <= window_days]
    if not inside:
        return None
    best = min(c.days for c in inside)
    tied = [c for c in inside if c.days == best]
    sources = list(dict.fromkeys(c.source for c in tied))
    return round(sum(c.value for c in tied) / len(tied), 4), sources


def observation_query(patient_id: str, registry: FieldRegistry, study_date: date,
                      window_days: int) -> dict[str, Any]:
    """Search parameters for the patient's Observations of every registry LOINC code in the window."""
    codes = list(dict.fromkeys([c for f in registry.fields for c in f.loinc] + list(PANEL_CODES)))
    lo = date.fromordinal(max(1, study_date.toordinal() - window_days))
    hi = date.fromordinal(study_date.toordinal() + window_days)
    return {
        "subject": f"Patient/{patient_id}",
        "code": ",".join(f"{LOINC}|{c}" for c in codes),
        "date": [f"ge{lo.isoformat()}", f"le{hi.isoformat()}T23:59:59Z"],
        "_count": "100",
    }


def _demographics(patient: Patient, registry: FieldRegistry, on: date) -> dict[str, tuple[FieldValue, str]]:
    ref = f"Patient/{patient.id}"
    out: dict[str, tuple[FieldValue, str]] = {}
    names = set(registry.names)
    sex = GENDER.get(str(patient.gender or ""))
    if "sex" in names and sex:
        out["sex"] = (sex, ref)
    birth = patient.birthDate
    if "age" in names and isinstance(birth, date) and birth <= on:
        out["age"] = (float(age_at(birth, on)), ref)
    return out


def _fill(values: dict[str, FieldValue], sources: dict[str, list[str]],
          found: Mapping[str, tuple[FieldValue, str | list[str]]]) -> None:
    for name, (value, src) in found.items():
        if values.get(name) is None and value is not None:
            values[name] = value
            sources[name] = [src] if isinstance(src, str) else list(src)


def fetch_ehr(settings: Settings, ctx: StudyContext, registry: FieldRegistry | None = None,
              client: FhirClient | None = None) -> EhrRecord:
    """The study's EHR record; never raises for FHIR failures (then unavailable + reason, DICOM values)."""
    registry = registry or registry_for(settings)
    values: dict[str, FieldValue] = dict.fromkeys(registry.names)
    sources: dict[str, list[str]] = {}
    dicom = dicom_values(ctx, registry)
    if not settings.fhir.base_url:
        _fill(values, sources, dicom)
        return EhrRecord(values, sources, available=False, reason="FHIR not configured (fhir.base_url empty)")
    study_date = ctx.reference_date
    own = client is None
    try:
        fhir_client = client or FhirClient.from_settings(settings.fhir)
        try:
            patient = match_patient(fhir_client, settings.fhir, ctx.patient_id, ctx.issuer)
            query = observation_query(str(patient.id), registry, study_date, settings.fhir.ehr_window_days)
            observations = fhir_client.search("Observation", query)
        finally:
            if own:
                fhir_client.close()
    except FhirError as err:
        log.info("EHR unavailable for study %s: %s", ctx.study_uid, err.reason)
        _fill(values, sources, dicom)
        return EhrRecord(values, sources, available=False, reason=err.reason)
    except Exception as err:  # noqa: BLE001 - the pipeline goes on image-only, the reason recorded
        log.exception("EHR pull failed for study %s", ctx.study_uid)
        _fill(values, sources, dicom)
        return EhrRecord(values, sources, available=False, reason=f"internal error: {type(err).__name__}")

    _fill(values, sources, _demographics(patient, registry, study_date))
    by_field: dict[str, list[Candidate]] = {}
    seen: set[tuple[str, str]] = set()
    for obs in observations:
        if not isinstance(obs, Observation):
            continue
        for cand in candidates(obs, registry, study_date):
            if (cand.field, cand.source) in seen:
                continue
            seen.add((cand.field, cand.source))
            by_field.setdefault(cand.field, []).append(cand)
    chosen: dict[str, tuple[FieldValue, list[str]]] = {}
    for name, cands in by_field.items():
        picked = choose(cands, settings.fhir.ehr_window_days)
        if picked is not None:
            chosen[name] = picked
    _fill(values, sources, chosen)
    _fill(values, sources, dicom)
    log.info("EHR for study %s: %d of %d fields", ctx.study_uid,
             sum(v is not None for v in values.values()), len(values))
    return EhrRecord(values, sources, available=True)
