"""The ``diff3m fhir`` commands against the dev FHIR server."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diff3m.cli import app
from tests.fhir_server import MRN_SYSTEM, FhirDevServer


def test_check_and_ehr(fhir_server: FhirDevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFF3M_FHIR__BASE_URL", fhir_server.base_url)
    monkeypatch.setenv("DIFF3M_FHIR__PATIENT_IDENTIFIER_SYSTEM", MRN_SYSTEM)
    runner = CliRunner()
    ok = runner.invoke(app, ["fhir", "check"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["fhirVersion"] == "4.0.1"
    out = runner.invoke(app, ["fhir", "ehr", "--patient-id", "DIFF3M-0001", "--study-date", "20240315"])
    assert out.exit_code == 0, out.output
    record = json.loads(out.stdout)
    assert record["available"] and record["values"]["bmi"] == 27.4
    bad = runner.invoke(app, ["fhir", "ehr", "--patient-id", "X", "--study-date", "2024-03-15"])
    assert bad.exit_code == 2


def test_check_reports_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.services import free_port

    monkeypatch.setenv("DIFF3M_FHIR__BASE_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("DIFF3M_FHIR__MAX_RETRIES", "0")
    out = CliRunner().invoke(app, ["fhir", "check"])
    assert out.exit_code == 1 and "FHIR check failed" in out.output
