"""Worklist priority of a study from its result (configured thresholds)."""

from __future__ import annotations

from diff3m.config import TriageSettings
from diff3m.db.models import PRIORITY_RANK, Priority


def priority_for(score: float, abnormal: bool, triage: TriageSettings) -> Priority:
    """The priority a result earns: stat above ``stat_score``, the abnormal priority, else routine."""
    if triage.stat_score is not None and score >= triage.stat_score:
        return Priority.STAT
    if abnormal and triage.urgent_when_abnormal:
        return Priority(triage.abnormal_priority)
    return Priority.ROUTINE


def higher(a: Priority, b: Priority) -> Priority:
    """The more urgent of two priorities."""
    return a if PRIORITY_RANK[a] >= PRIORITY_RANK[b] else b
