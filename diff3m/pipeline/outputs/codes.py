"""Coded concepts our outputs use: standard ones (SNOMED CT, UCUM) and our private scheme 99DIFF3M."""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

SCHEME = "99DIFF3M"


def coding_scheme() -> CodingSchemeIdentificationItem:
    """The Coding Scheme Identification item that declares 99DIFF3M in every object using it."""
    return CodingSchemeIdentificationItem(
        designator=SCHEME, name="Diff3M node private codes", responsible_organization="Diff3M node"
    )


def private(value: str, meaning: str) -> Code:
    """A concept of our private coding scheme."""
    return Code(value, SCHEME, meaning)


# Procedure reported (TID 1500 row 5): SNOMED CT "Plain chest X-ray".
PROCEDURE_CHEST_XRAY = Code("399208008", "SCT", "Plain chest X-ray")
FINDING_SITE_CHEST = codes.SCT.Chest

# The image-level result (TID 1501).
ANOMALY_SCORE = private("anomaly-score", "Anomaly score")
ANOMALY_ASSESSMENT = private("anomaly-eval", "Anomaly assessment")
ABNORMAL = codes.SCT.Abnormal
NORMAL = codes.SCT.Normal
SCORE_UNIT = Code("{score}", "UCUM", "score")

# How the EHR took part.
EHR_STATUS = private("ehr-status", "EHR conditioning")
EHR_USED = private("ehr-used", "EHR used")
EHR_NOT_USED = private("ehr-not-used", "EHR available but not used")
EHR_UNAVAILABLE = private("ehr-unavailable", "EHR unavailable")
EHR_REASON = private("ehr-reason", "EHR unavailable reason")
EHR_FIELDS = private("ehr-fields", "EHR fields used")

# The planar ROI (TID 1410).
ANOMALOUS_REGION = private("anomalous-region", "Most anomalous region")
REGION_MEAN = private("region-mean", "Mean anomaly in region")
REGION_MAX = private("region-max", "Maximum anomaly in region")


def score_variant(name: str) -> Code:
    """The code of one score variant (``ScoreResult.scores`` key, e.g. ``mse``)."""
    return private(f"score-{name}", f"Anomaly score ({name})")
