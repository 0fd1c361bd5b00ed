"""``diff3m fhir ...``: check the FHIR connection, show a study's EHR record, run the dev FHIR server."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from diff3m.cli_common import ConfigOption, settings_or_exit

DEV_SERVER_DIR = Path(__file__).resolve().parents[2] / "deploy" / "fhir-dev-server"

fhir_app = typer.Typer(help="FHIR: connection check, EHR lookup, dev server.", no_args_is_help=True)


@fhir_app.command("check")
def check(config: ConfigOption = None) -> None:
    """Authenticate and read the server's CapabilityStatement; exit 1 with the reason on failure."""
    from diff3m.fhir.client import FhirClient
    from diff3m.fhir.errors import FhirError

    settings = settings_or_exit(config)
    if not settings.fhir.base_url:
        typer.echo("fhir.base_url is empty: the node runs image-only", err=True)
        raise typer.Exit(1)
    try:
        with FhirClient.from_settings(settings.fhir) as client:
            resp = client.request("GET", "metadata")
            cap = resp.json()
    except (FhirError, ValueError) as err:
        typer.echo(f"FHIR check failed: {getattr(err, 'reason', err)}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps({"base_url": settings.fhir.base_url, "auth": settings.fhir.auth,
                           "fhirVersion": cap.get("fhirVersion"), "software": cap.get("software")}))


@fhir_app.command("ehr")
def ehr(patient_id: Annotated[str, typer.Option(help="DICOM PatientID")],
        issuer: Annotated[str, typer.Option(help="DICOM IssuerOfPatientID")] = "",
        study_date: Annotated[str, typer.Option(help="study date YYYYMMDD (default today)")] = "",
        config: ConfigOption = None) -> None:
    """Print the EHR record the model would get for a patient on a study date (JSON)."""
    from diff3m.fhir.ehr import StudyContext, fetch_ehr, parse_da

    settings = settings_or_exit(config)
    when = parse_da(study_date) if study_date else None
    if study_date and when is None:
        typer.echo("--study-date must be YYYYMMDD", err=True)
        raise typer.Exit(2)
    record = fetch_ehr(settings, StudyContext(patient_id, issuer or None, when))
    typer.echo(json.dumps(asdict(record), indent=2))


@fhir_app.command("dev-server")
def dev_server(port: int = 8090, host: str = "127.0.0.1", seed: bool = True) -> None:
    """Run the dev FHIR R4 server (deploy/fhir-dev-server, Node 20) seeded with the demo patients."""
    node = shutil.which("node")
    if not node:
        typer.echo("node is not installed (run deploy/scripts/ensure-test-tools.sh)", err=True)
        raise typer.Exit(1)
    if not (DEV_SERVER_DIR / "node_modules").is_dir():
        typer.echo(f"run `npm ci` in {DEV_SERVER_DIR} first (deploy/scripts/ensure-test-tools.sh)", err=True)
        raise typer.Exit(1)
    args = [node, str(DEV_SERVER_DIR / "server.js"), "--port", str(port), "--host", host]
    if seed:
        args += ["--seed", str(DEV_SERVER_DIR / "seed-bundle.json")]
    os.execv(node, args)


def register(app: typer.Typer) -> None:
    """Add the ``fhir`` command group to the ``diff3m`` app."""
    app.add_typer(fhir_app, name="fhir")
