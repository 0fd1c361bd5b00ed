"""``diff3m bench e2e`` on the tiny checkpoint: a real `diff3m serve`, Orthanc as the PACS, JSON out."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from diff3m.cli import app
from tests import services


def test_e2e_tiny_single_and_queued(tiny_checkpoint):
    services.require_tool("storescu")
    services.require_tool("Orthanc")
    # queued <= batch size: extra studies would wait on the pipeline's infer lease (bench/RESULTS.md)
    res = CliRunner().invoke(app, ["bench", "e2e", "--checkpoint", str(tiny_checkpoint), "--single", "1",
                                   "--queued", "2", "--batch-size", "2", "--rows", "192", "--cols", "160",
                                   "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    (single,) = out["single"]
    assert single["sr_stored_at"] > single["completed_at"]
    assert single["turnaround_seconds"] == out["single_median_seconds"] > 0
    assert {"ehr", "infer", "build"} <= set(single["stages"])
    (q,) = out["queue"]
    assert q["batch_size"] == 2 and q["studies"] == 2 and q["studies_per_minute"] > 0
    assert out["batching_gain"] == {"2": 1.0}
    assert "| 2 | 2 |" in res.stdout
