"""Deployment files stay true to the code: config example loads, compose/k8s parse, every key documented."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml
from pydantic import BaseModel

from diff3m.config import Settings, load_settings
from tests.services import require_tool

ROOT = Path(__file__).resolve().parents[2]


def _keys(model: type[BaseModel], prefix: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = getattr(ann, "__args__", (ann,))[0] if getattr(ann, "__origin__", None) is list else ann
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            out += _keys(sub, f"{prefix}{name}.")
        else:
            out.append(f"{prefix}{name}")
    return out


def test_config_example_loads_and_covers_every_key() -> None:
    settings = load_settings(ROOT / "deploy" / "config.example.toml")
    assert settings.routing[0].to == "pacs"
    text = (ROOT / "deploy" / "config.example.toml").read_text()
    for key in _keys(Settings, ""):
        assert re.search(rf"^#?\s*{re.escape(key.rsplit('.', 1)[-1])}\s*=", text, re.M), key


def test_operations_doc_references_every_key_and_the_screenshot() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for key in _keys(Settings, ""):
        assert f"`{key}`" in doc, f"docs/operations.md does not document {key}"
    assert "screenshot-worklist.png" in doc and (ROOT / "docs" / "screenshot-worklist.png").is_file()
    assert "diff3m db upgrade" in doc


def test_compose_has_every_part_and_a_gpu_reservation() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "scp", "web", "worker", "fhir"} <= set(services)
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia"
    assert services["web"]["command"][0] == "web" and services["scp"]["command"][0] == "scp"
    assert services["worker"]["command"][0] == "worker"
    assert services["migrate"]["command"][:2] == ["db", "upgrade"]
    env = services["web"]["environment"]
    assert env["DIFF3M_QUEUE__BROKER_URL"].startswith("redis://") and "DIFF3M_WEB__TOKEN" in env
    for name, svc in services.items():  # every env key is a real setting
        for key in (svc.get("environment") or {}):
            if key.startswith("DIFF3M_"):
                section, field = key.removeprefix("DIFF3M_").lower().split("__")
                assert field in type(getattr(Settings(), section)).model_fields, (name, key)


def test_k8s_manifests_render() -> None:
    kubectl = require_tool("kubectl")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert ("Deployment", "diff3m-worker") in kinds and ("Job", "diff3m-migrate") in kinds
    worker = next(d for d in docs if d["metadata"]["name"] == "diff3m-worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert all(d["metadata"].get("namespace") == "diff3m" for d in docs if d["kind"] != "Namespace")


def test_systemd_units_run_real_commands() -> None:
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert {u.name for u in units} >= {"diff3m-scp.service", "diff3m-web.service", "diff3m-worker@.service",
                                      "diff3m-migrate.service", "diff3m-serve.service"}
    for unit in units:
        exec_start = re.search(r"^ExecStart=\S+/diff3m (\w+)", unit.read_text(), re.M)
        assert exec_start and exec_start.group(1) in {"scp", "web", "worker", "serve", "db"}, unit.name
