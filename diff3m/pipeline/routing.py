"""Routing rules: which destinations get a study's originals and/or results."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from diff3m.config import RoutingRule

RESULT_KEYS = {"abnormal", "score_gte", "score_lt", "priority"}


@dataclass(frozen=True)
class RouteFacts:
    """What rules may test: header tags of the study's first instance, the caller, the result."""

    tags: dict[str, str]  # DICOM keyword -> value as text (Modality, BodyPartExamined, ...)
    calling_aet: str = ""
    abnormal: bool | None = None  # None until there is a result
    score: float | None = None
    priority: str | None = None


@dataclass(frozen=True)
class Route:
    """One thing to send: originals or results of a study to a named destination."""

    rule: str
    send: str  # "originals" | "results"
    to: str


def needs_result(rule: RoutingRule) -> bool:
    """True when the rule tests the AI result, so it can only fire after inference."""
    return bool(RESULT_KEYS & set(rule.when)) or "results" in rule.send


def _match_value(actual: str | None, expected: Any) -> bool:
    if isinstance(expected, list):
        return any(_match_value(actual, e) for e in expected)
    if actual is None:
        return False
    pattern = str(expected)
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(actual.upper(), pattern.upper())
    return actual.strip().upper() == pattern.strip().upper()


def rule_matches(rule: RoutingRule, facts: RouteFacts) -> bool:
    """Do all of the rule's conditions hold? (An empty ``when`` matches everything.)"""
    for key, expected in rule.when.items():
        if key == "abnormal":
            if facts.abnormal is None or bool(expected) != facts.abnormal:
                return False
        elif key == "score_gte":
            if facts.score is None or facts.score < float(expected):
                return False
        elif key == "score_lt":
            if facts.score is None or facts.score >= float(expected):
                return False
        elif key == "priority":
            if not _match_value(facts.priority, expected):
                return False
        elif key in ("CallingAE", "calling_aet"):
            if not _match_value(facts.calling_aet, expected):
                return False
        elif not _match_value(facts.tags.get(key), expected):
            return False
    return True


def plan_routes(rules: list[RoutingRule], facts: RouteFacts, *, with_result: bool) -> list[Route]:
    """Routes whose rules hold. ``with_result`` False plans only rules that need no result."""
    routes: list[Route] = []
    for rule in rules:
        if needs_result(rule) != with_result:
            continue
        if rule_matches(rule, facts):
            routes.extend(Route(rule.name, what, rule.to) for what in rule.send)
    return routes
