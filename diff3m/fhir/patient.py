"""Patient match: DICOM PatientID (+ IssuerOfPatientID mapped to a system) -> exactly one FHIR Patient."""

from __future__ import annotations

from fhir.resources.R4B.patient import Patient

from diff3m.config import FhirSettings
from diff3m.fhir.client import FhirClient
from diff3m.fhir.errors import PatientMatchError


def identifier_query(fhir: FhirSettings, patient_id: str | None, issuer: str | None) -> str:
    """The ``identifier`` search value (``system|value`` or ``value``) for a DICOM patient.

    An issuer mapped in ``issuer_systems`` gives its system. With issuers configured, an issuer
    that is not mapped is refused (a foreign MRN must not be matched against ours). Otherwise
    ``patient_identifier_system`` is used when set, else the value alone.
    """
    pid = (patient_id or "").strip()
    if not pid:
        raise PatientMatchError("study has no PatientID")
    if any(c in pid for c in "|,$\\"):
        raise PatientMatchError("PatientID contains characters not allowed in a token search")
    iss = (issuer or "").strip()
    if iss and fhir.issuer_systems:
        system = fhir.issuer_systems.get(iss)
        if not system:
            raise PatientMatchError(f"IssuerOfPatientID {iss!r} is not mapped in fhir.issuer_systems")
        return f"{system}|{pid}"
    if fhir.patient_identifier_system:
        return f"{fhir.patient_identifier_system}|{pid}"
    return pid


def match_patient(client: FhirClient, fhir: FhirSettings, patient_id: str | None,
                  issuer: str | None = None) -> Patient:
    """The one Patient with this identifier; PatientMatchError when none or several (never a guess)."""
    query = identifier_query(fhir, patient_id, issuer)
    found = client.search("Patient", {"identifier": query})
    ids = {str(p.id) for p in found}  # type: ignore[attr-defined]
    if not ids:
        raise PatientMatchError("no FHIR Patient has the study's PatientID", retryable=True)
    if len(ids) > 1:
        raise PatientMatchError(f"{len(ids)} FHIR Patients share the study's PatientID; not guessing")
    patient = found[0]
    if not isinstance(patient, Patient):
        raise PatientMatchError("Patient search returned another resource type")
    return patient
