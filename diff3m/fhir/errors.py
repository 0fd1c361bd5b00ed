"""Typed FHIR errors: every failure talking to the FHIR server is one of these, with a reason."""

from __future__ import annotations


class FhirError(Exception):
    """A FHIR interaction failed; ``reason`` says why in one line (no PHI)."""

    retryable = False

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


class FhirRetryableError(FhirError):
    """Transient: the server is down, slow, overloaded (429) or failing (5xx); try again later."""

    retryable = True


class FhirInvalidResponse(FhirError):
    """The server answered with content that is not valid JSON or not a valid FHIR R4 resource."""


class FhirHttpError(FhirError):
    """The server refused the request with a 4xx status (its OperationOutcome text in the reason)."""


class FhirAuthError(FhirError):
    """Authentication failed: the token endpoint refused us or the server rejected our token."""


class PatientMatchError(FhirError):
    """The study's patient matched no FHIR Patient, or more than one."""
