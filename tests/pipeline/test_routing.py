"""Routing rules and triage priorities."""

from __future__ import annotations

from diff3m.config import RoutingRule, TriageSettings
from diff3m.db.models import Priority
from diff3m.pipeline.routing import RouteFacts, needs_result, plan_routes, rule_matches
from diff3m.pipeline.triage import higher, priority_for

FACTS = RouteFacts(tags={"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "PA"},
                   calling_aet="MODALITY1", abnormal=True, score=0.8, priority="urgent")


def rule(**kw):
    return RoutingRule(name=kw.pop("name", "r"), to=kw.pop("to", "pacs"), **kw)


def test_tag_conditions_case_glob_and_lists():
    assert rule_matches(rule(when={"Modality": "dx"}), FACTS)
    assert rule_matches(rule(when={"Modality": ["CR", "DX"]}), FACTS)
    assert rule_matches(rule(when={"CallingAE": "MOD*"}), FACTS)
    assert not rule_matches(rule(when={"Modality": "CR"}), FACTS)
    assert not rule_matches(rule(when={"StationName": "X"}), FACTS)  # absent tag never matches
    assert rule_matches(rule(when={}), FACTS)


def test_result_conditions():
    assert rule_matches(rule(when={"abnormal": True, "score_gte": 0.5}), FACTS)
    assert not rule_matches(rule(when={"abnormal": False}), FACTS)
    assert not rule_matches(rule(when={"score_gte": 0.9}), FACTS)
    assert rule_matches(rule(when={"score_lt": 0.9}), FACTS)
    no_result = RouteFacts(tags=FACTS.tags)
    assert not rule_matches(rule(when={"abnormal": True}), no_result)


def test_plan_splits_rules_by_need_of_result():
    forward = rule(name="fwd", send="originals", when={"Modality": "DX"}, to="archive")
    results = rule(name="res", send=["results", "originals"], when={"abnormal": True}, to="pacs")
    assert not needs_result(forward) and needs_result(results)
    early = plan_routes([forward, results], FACTS, with_result=False)
    late = plan_routes([forward, results], FACTS, with_result=True)
    assert [(r.send, r.to) for r in early] == [("originals", "archive")]
    assert [(r.send, r.to) for r in late] == [("results", "pacs"), ("originals", "pacs")]


def test_priority_from_score():
    t = TriageSettings(stat_score=0.9)
    assert priority_for(0.95, True, t) == Priority.STAT
    assert priority_for(0.5, True, t) == Priority.URGENT
    assert priority_for(0.5, False, t) == Priority.ROUTINE
    assert priority_for(0.5, True, TriageSettings(urgent_when_abnormal=False)) == Priority.ROUTINE
    assert higher(Priority.ROUTINE, Priority.URGENT) == Priority.URGENT
    assert higher(Priority.STAT, Priority.URGENT) == Priority.STAT
