"""Frontal / lateral detection for chest radiographs from ViewPosition, ViewCodeSequence or descriptions."""

from __future__ import annotations

import re
from dataclasses import dataclass

FRONTAL_POSITIONS = {"PA", "AP"}
LATERAL_POSITIONS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "LATERAL_DECUBITUS"}
# SNOMED CT / SNOMED-RT view codes (CID 4010) seen in ViewCodeSequence
_FRONTAL_CODES = {"399348003", "399182000", "R-10214", "R-10206", "272479008", "R-10208"}
_LATERAL_CODES = {"399173006", "399198007", "R-10236", "R-10232", "260444002", "R-102CD"}
_WORD_LATERAL = re.compile(r"\b(LAT|LATERAL|LL|RL)\b")
_WORD_FRONTAL = re.compile(r"\b(PA|AP|FRONTAL|P\.A\.|A\.P\.)")


@dataclass(frozen=True)
class View:
    """The view of one image: what was found, and whether the model should evaluate it."""

    position: str | None  # normalised ViewPosition, or what the code/description said
    frontal: bool
    source: str  # "ViewPosition", "ViewCodeSequence", "description" or "unknown"


def classify(view_position: str | None, view_codes: list[tuple[str, str]] | None = None,
             descriptions: list[str] | None = None) -> View:
    """Decide frontal (AP/PA) vs lateral; an image with no view information is treated as frontal."""
    vp = (view_position or "").strip().upper()
    if vp in FRONTAL_POSITIONS:
        return View(vp, True, "ViewPosition")
    if vp in LATERAL_POSITIONS:
        return View(vp, False, "ViewPosition")
    for value, meaning in view_codes or []:
        m = meaning.strip().lower()
        if value in _LATERAL_CODES or "lateral" in m:
            return View("LATERAL", False, "ViewCodeSequence")
        if value in _FRONTAL_CODES or m in {"postero-anterior", "antero-posterior", "frontal"}:
            return View("AP" if "antero-posterior" == m or value in {"399182000", "R-10206"} else "PA",
                        True, "ViewCodeSequence")
    for text in descriptions or []:
        t = text.upper()
        if _WORD_LATERAL.search(t):
            return View("LATERAL", False, "description")
        if _WORD_FRONTAL.search(t):
            return View(vp or None, True, "description")
    return View(vp or None, True, "unknown")
