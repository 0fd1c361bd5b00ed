"""``diff3m bench ingest``: node, storescp and Orthanc receive the same images; JSON with the ratios."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from diff3m.cli import app
from tests import services


def test_ingest_small_run_reports_every_receiver():
    for tool in ("storescu", "storescp", "Orthanc"):
        services.require_tool(tool)
    res = CliRunner().invoke(app, ["bench", "ingest", "--images", "6", "--assocs", "2", "--rounds", "1",
                                   "--processes", "1", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    names = [r["receiver"] for r in out["receivers"]]
    assert names == ["diff3m node", "storescp --fork", "Orthanc"]
    node = out["receivers"][0]["images_per_second"]
    for r in out["receivers"]:
        assert r["images_per_second"] > 0 and len(r["rounds"]) == 1
        assert r["node_ratio"] == pytest.approx(node / r["images_per_second"])
    assert out["node_vs_storescp"] == pytest.approx(out["receivers"][1]["node_ratio"])
    assert out["node_vs_orthanc"] == pytest.approx(out["receivers"][2]["node_ratio"])
