"""``diff3m bench cpu-options``: each variant in its own process, JSON out, baseline first."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from diff3m.cli import app


def test_cpu_options_tiny_two_variants():
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "cpu-options",
            "--network",
            "tiny",
            "--rounds",
            "1",
            "--repeats",
            "1",
            "--only",
            "cl-1thread",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    names = [r["variant"]["name"] for r in out["results"]]
    assert names == ["baseline (torch defaults)", "channels-last + 1 thread"]
    base, cl = out["results"]
    assert base["speedup_vs_baseline"] == 1.0 and base["seconds_per_pass"] > 0
    assert cl["variant"]["threads"] == 1 and cl["variant"]["channels_last"] is True
    assert cl["max_abs_diff"] < 1e-3  # channels-last changes the memory layout, not the result
    assert "| channels-last + 1 thread |" in res.stdout


def test_cpu_options_unknown_variant_is_a_clear_error():
    res = CliRunner().invoke(app, ["bench", "cpu-options", "--only", "warp-drive"])
    assert res.exit_code == 2 and "unknown variants" in res.output
