"""Configuration: TOML file, env overrides, clear errors, masked secrets."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diff3m.config import SECRET_MASK, ConfigError, load_settings


def test_defaults_are_embedded():
    s = load_settings()
    assert s.database.url.startswith("sqlite:///var/")
    assert s.queue.broker_url.startswith("sqla+sqlite:///var/")
    assert s.model.checkpoint == "builtin:demo"
    assert s.fhir.base_url == ""


def test_toml_then_env_override(tmp_path, monkeypatch):
    f = tmp_path / "c.toml"
    f.write_text(
        '[node]\nae_title = "NODE1"\nport = 4242\nallowed_calling_aets = ["MOD1", "MOD2@10.0.0.5"]\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 4243\n'
        '[[routing]]\nname = "all"\nsend = "results"\nto = "pacs"\n'
        '[model]\nbatch_size = 8\n'
    )
    monkeypatch.setenv("DIFF3M_NODE__PORT", "5555")
    monkeypatch.setenv("DIFF3M_MODEL__DEVICE", "cpu")
    s = load_settings(f)
    assert s.node.ae_title == "NODE1"
    assert s.node.port == 5555
    assert s.model.device == "cpu" and s.model.batch_size == 8
    assert s.routing[0].send == ["results"]
    assert s.destination("pacs").port == 4243


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ("[node]\nae_title = 'WAY_TOO_LONG_AE_TITLE'\n", "node.ae_title"),
        ("[fhir]\nbase_url = 'ftp://x'\n", "fhir.base_url"),
        ("[fhir]\nbase_url = 'http://x'\nauth = 'bearer'\n", "needs token"),
        ("[model]\ndevice = 'tpu'\n", "model.device"),
        ("[nodes]\nport = 1\n", "nodes"),
        ("[[routing]]\nname='r'\nto='nowhere'\n", "unknown destination 'nowhere'"),
        ("[node\n", "TOML syntax"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, needle):
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(f)
    assert needle in str(exc.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_config_show_masks_secrets(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(
        "[fhir]\nbase_url = 'http://fhir'\nauth = 'bearer'\ntoken = 's3cr3t-token'\n"
        "[web]\ntoken = 'webtoken123'\n[database]\nurl = 'postgresql://u:pgpass@db/x'\n"
    )
    out = subprocess.run([sys.executable, "-m", "diff3m", "config", "show", "--config", str(f)],
                         capture_output=True, text=True, check=True).stdout
    assert "s3cr3t-token" not in out and "webtoken123" not in out and "pgpass" not in out
    data = json.loads(out)
    assert data["fhir"]["token"] == SECRET_MASK
    assert data["database"]["url"] == f"postgresql://u:{SECRET_MASK}@db/x"


def test_cli_bad_config_exits_2(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[node]\nport = 0\n")
    proc = subprocess.run([sys.executable, "-m", "diff3m", "config", "show", "--config", str(f)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "node.port" in proc.stderr
