"""``bench/paired_auroc.py``: paired bootstrap of two evaluate reports on the same images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "paired_auroc.py"


def report(path: Path, scores: np.ndarray, normal: np.ndarray, ids: list[str]) -> Path:
    cases = [{"study_id": i, "score": float(s), "normal": bool(n), "findings": [] if n else ["Nodule"]}
             for i, s, n in zip(ids, scores, normal, strict=True)]
    path.write_text(json.dumps({"auroc": 0.0, "cases": cases}))
    return path


def run(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_better_model_wins_with_a_tight_interval_and_equal_models_do_not(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    normal = np.arange(120) < 60
    ids = [f"s{i}" for i in range(120)]
    weak = rng.normal(size=120) + 0.5 * ~normal
    strong = weak + 2.0 * ~normal  # the same images, far better separated
    a, b = report(tmp_path / "a.json", weak, normal, ids), report(tmp_path / "b.json", strong, normal, ids)
    res = run(a, b, "--resamples", 200, "--out", tmp_path / "r.json")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "r.json").read_text())
    o = r["overall"]
    assert o["difference"] > 0.2 and o["ci95"][0] > 0 and o["p_b_not_better"] == 0.0
    assert (o["n_abnormal"], o["n_normal"]) == (60, 60) and set(r["per_finding"]) == {"Nodule"}
    assert run(a, a, "--resamples", 50, "--out", tmp_path / "s.json").returncode == 0
    s = json.loads((tmp_path / "s.json").read_text())["overall"]
    assert s["difference"] == 0.0 and s["p_b_not_better"] == 1.0
    other = report(tmp_path / "c.json", weak, normal, [f"x{i}" for i in range(120)])
    assert "different images" in run(a, other).stderr
    (tmp_path / "old.json").write_text(json.dumps({"auroc": 0.5}))
    assert "no per-image cases" in run(tmp_path / "old.json", b).stderr
