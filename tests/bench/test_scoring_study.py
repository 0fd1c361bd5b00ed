"""``bench/scoring_study.py``: scoring variants of two checkpoints (an EHR ablation), picked on validation."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import generate_dataset

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "scoring_study.py"


@pytest.fixture(scope="module")
def arms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """Tiny phantoms with a validation split, and a tiny EHR arm and image-only arm trained on them."""
    from diff3m.models.train import train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("scoring_study")
    data = root / "phantoms"
    generate_dataset(data, 16, 12, size=32, seed=5, fractions=(0.5, 0.25, 0.25), progress=False)
    samples = load_dataset(data, "mimic")
    ckpts = [
        train(
            samples,
            root / name,
            profile="tiny",
            steps=4,
            use_ehr=ehr,
            seed=0,
            calibration_images=2,
            progress=False,
        )
        for name, ehr in (("ehr", True), ("noehr", False))
    ]
    for ckpt in ckpts:  # the scorer's recipe: noise encoding, normalised peak
        res = CliRunner().invoke(
            app,
            [
                "calibrate",
                "--checkpoint",
                str(ckpt),
                "--data",
                str(data),
                "--encoding",
                "noise",
                "--draws",
                "2",
                "--score",
                "normalized_max",
                "--device",
                "cpu",
            ],
        )
        assert res.exit_code == 0, res.output
    return data, ckpts[0], ckpts[1]


def test_both_arms_every_variant_the_picks_and_their_cases(
    arms: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, ehr, noehr = arms
    out, cases = tmp_path / "study.json", tmp_path / "cases"
    args = [
        "--checkpoint",
        ehr,
        "--cache",
        tmp_path / "ehr",
        "--baseline",
        noehr,
        "--baseline-cache",
        tmp_path / "noehr",
        "--data",
        data,
        "--levels",
        "50,100",
        "--cases",
        cases,
        "--device",
        "cpu",
        "--out",
        out,
    ]
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    rows = result["rows"]
    # level combinations x sigmas x aggregations, and the two-level combination fused the second way
    assert len(rows) == (3 + 1) * 4 * 4
    assert sum(r["fusion"] == "score_max" for r in rows) == 4 * 4
    for r in rows:
        for split in ("validate", "test"):
            assert r["gain"][split] == pytest.approx(r[split]["auroc"] - r["baseline"][split]["auroc"])
    assert result["validation_pick"]["validate"]["auroc"] == max(r["validate"]["auroc"] for r in rows)
    assert result["gain_pick"]["gain"]["validate"] == max(r["gain"]["validate"] for r in rows)
    fused = [r for r in rows if r["fusion"] == "score_max"]
    assert result["score_max_pick"]["fusion"] == "score_max"
    assert result["score_max_pick"]["validate"]["auroc"] == max(r["validate"]["auroc"] for r in fused)
    # the picks' per-image test scores, in evaluate's form, give back the rows' AUROCs
    test = [s for s in load_dataset(data, "mimic") if s.split == "test"]
    for pick in ("validation_pick", "gain_pick", "score_max_pick", "shipped"):
        for arm, key in (("a", "baseline"), ("b", None)):
            report = json.loads((cases / f"{pick}-{arm}.json").read_text())
            assert sorted(c["study_id"] for c in report["cases"]) == sorted(s.study_id for s in test)
            auc = roc_auc_score(
                [not c["normal"] for c in report["cases"]], [c["score"] for c in report["cases"]]
            )
            row = result[pick][key] if key else result[pick]
            assert auc == pytest.approx(row["test"]["auroc"])
    # without a baseline (the maps cached): only this checkpoint's per-image scores, as with one
    alone = tmp_path / "alone"
    solo = [*args[:4], *args[8:]]  # --checkpoint, --cache, --data ... --out
    solo[solo.index(cases)], solo[solo.index(out)] = alone, tmp_path / "alone.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, solo)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in alone.iterdir()) == [
        "score_max_pick-b.json",
        "shipped-b.json",
        "validation_pick-b.json",
    ]
    assert json.loads((alone / "shipped-b.json").read_text()) == json.loads(
        (cases / "shipped-b.json").read_text()
    )
    # the checkpoint's own recipe is what diff3m evaluate scores, image for image
    shipped = result["shipped"]
    assert (shipped["levels"], shipped["aggregation"]) == ([100], "max")  # the tiny profile's noise level
    ev = tmp_path / "eval.json"
    res = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--checkpoint",
            str(ehr),
            "--data",
            str(data),
            "--out",
            str(ev),
            "--no-plots",
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    evaluated = {c["study_id"]: c["score"] for c in json.loads(ev.read_text())["cases"]}
    studied = {c["study_id"]: c["score"] for c in json.loads((cases / "shipped-b.json").read_text())["cases"]}
    assert studied == pytest.approx(evaluated, rel=1e-5)


def _study_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scoring_study", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_score_max_fuses_levels_that_each_see_one_finding() -> None:
    """A spot only level 50 shows and a spot only level 100 shows: each level alone misses one, the fusion
    of their standardised scores ranks both above every normal, whatever each level's residual scale."""
    study = _study_module()
    rng = np.random.default_rng(3)
    size, scale = 16, {50: 0.01, 100: 0.1}  # the higher level leaves ten times larger residuals

    def maps(n: int, level: int, spot_at: int | None) -> np.ndarray:
        m = np.abs(rng.normal(0, scale[level], (n, size, size)))
        if spot_at == level:
            m[:, 5:8, 5:8] += 8 * scale[level]
        return m

    raw = {}
    for lv in (50, 100):
        raw[("stats", lv)] = maps(60, lv, None)
        for split in ("validate", "test"):
            raw[(split, lv)] = np.concatenate([maps(30, lv, None), maps(10, lv, 50), maps(10, lv, 100)])
    labels = [0] * 30 + [1] * 20
    rows = {(v[0], v[1], v[2], v[3]): v[4] for v in study.variants(raw, [50, 100])}
    assert len(rows) == 4 * 4 * 4  # sigmas x aggregations x (L50, L100, L50+L100 fused either way)
    assert sum(key[3] == "score_max" for key in rows) == 4 * 4
    for sigma in study.SIGMAS:
        key = (sigma, "max")
        for lv in (50, 100):
            assert roc_auc_score(labels, rows[((lv,), *key, "map_mean")]["test"]) < 0.9
        assert roc_auc_score(labels, rows[((50, 100), *key, "score_max")]["test"]) == 1.0
