"""Typed FHIR errors: every failure talking to the FHIR server is one of these, with a reason.

``retryable`` tells the delivery outbox whether waiting can help (it dead-letters at once when
False): network errors, timeouts, 429/5xx, garbage from a proxy, auth hiccups and a patient not
(yet) registered are retryable; a request the server rejects (4xx) or an ambiguous match is not.
"""

from __future__ import annotations


class FhirError(Exception):
    """A FHIR interaction failed; ``reason`` says why in one line (no PHI)."""

    retryable = False

    def __init__(self, reason: str, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        if retryable is not None:
            self.retryable = retryable


class FhirRetryableError(FhirError):
    """Transient: the server is down, slow, overloaded (429) or failing (5xx); try again later."""

    retryable = True


class FhirInvalidResponse(FhirError):
    """The server answered with content that is not valid JSON or not a valid FHIR R4 resource."""

    retryable = True  # typically a proxy error page; the next attempt may reach the server


class FhirHttpError(FhirError):
    """The server refused the request with a 4xx status (its OperationOutcome text in the reason)."""

    def __init__(self, reason: str, status: int | None = None, retryable: bool | None = None) -> None:
        super().__init__(reason, status, status in (409, 412) if retryable is None else retryable)


class FhirAuthError(FhirError):
    """Authentication failed: the token endpoint refused us or the server rejected our token."""

    retryable = True  # credentials may be fixed or the token endpoint may recover; the outbox caps attempts


class PatientMatchError(FhirError):
    """The study's patient matched no FHIR Patient (retryable: it may be registered later), or several."""
