"""Worklist triage: raise (never lower) the priority of the FHIR ServiceRequest found by accession."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fhir.resources.R4B.servicerequest import ServiceRequest

from diff3m.config import Settings
from diff3m.fhir.client import FhirClient
from diff3m.fhir.errors import FhirError, FhirHttpError

log = logging.getLogger(__name__)

PRIORITY_ORDER = ("routine", "urgent", "asap", "stat")
MAX_CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class TriageOutcome:
    """What triage did to the ServiceRequest: changed or not, old/new priority, id and versions."""

    changed: bool
    reason: str
    resource_id: str | None = None
    old_priority: str | None = None
    new_priority: str | None = None
    version_before: str | None = None
    version_after: str | None = None


def rank(priority: str | None) -> int:
    """Order of a FHIR request priority (routine < urgent < asap < stat); no priority counts as routine."""
    p = (priority or "routine").lower()
    if p not in PRIORITY_ORDER:
        raise ValueError(f"unknown priority {priority!r}")
    return PRIORITY_ORDER.index(p)


def find_service_request(client: FhirClient, accession: str) -> ServiceRequest | None:
    """The one ServiceRequest whose identifier is the accession number; None when none; error when several."""
    found = client.search("ServiceRequest", {"identifier": accession})
    ids = {str(r.id) for r in found}  # type: ignore[attr-defined]
    if len(ids) > 1:
        raise FhirError(f"{len(ids)} ServiceRequests carry accession {accession}; not guessing")
    sr = found[0] if found else None
    return sr if isinstance(sr, ServiceRequest) else None


def raise_priority(settings: Settings, accession: str, new_priority: str,
                   client: FhirClient | None = None) -> TriageOutcome:
    """Raise the ServiceRequest's priority to ``new_priority`` unless it already is as high or higher."""
    target = new_priority.lower()
    rank(target)  # validates
    if not accession or any(c in accession for c in "|,$\\"):
        return TriageOutcome(False, "no usable accession number")
    own = client is None
    fhir_client = client or FhirClient.from_settings(settings.fhir)
    try:
        for _ in range(MAX_CONFLICT_RETRIES):
            sr = find_service_request(fhir_client, accession)
            if sr is None:
                return TriageOutcome(False, "no ServiceRequest with this accession number")
            old = str(sr.priority) if sr.priority else None
            version = sr.meta.versionId if sr.meta else None
            if old is not None and old not in PRIORITY_ORDER:
                raise FhirError(f"ServiceRequest/{sr.id} has an unknown priority {old!r}; not touching it")
            if rank(old) >= rank(target):
                return TriageOutcome(False, "priority already as high or higher", str(sr.id), old, old,
                                     version, version)
            sr.priority = target
            try:
                updated = fhir_client.update(sr, if_match=f'W/"{version}"' if version else None)
            except FhirHttpError as err:
                if err.status in (409, 412):  # changed under us: read it again and re-decide
                    continue
                raise
            after = updated.meta.versionId if updated.meta else None  # type: ignore[attr-defined]
            log.info("ServiceRequest/%s priority %s -> %s", sr.id, old, target)
            return TriageOutcome(True, "priority raised", str(sr.id), old, target, version, after)
        raise FhirError(f"ServiceRequest for accession {accession} kept changing; gave up")
    finally:
        if own:
            fhir_client.close()
