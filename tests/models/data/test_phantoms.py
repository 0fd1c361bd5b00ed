"""Phantom generator: determinism, the MIMIC layout it writes, and the EHR effects on anatomy."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from diff3m.cli import app
from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import PhantomSet, generate_dataset, make_cases
from diff3m.models.data.phantoms.anatomy import load_anatomy
from diff3m.models.data.phantoms.cases import (
    CARDIOMEGALY_EXTRA,
    DESIGNS,
    Finding,
    PatientEhr,
    expected_heart_scale,
    make_case,
    sample_finding,
)
from diff3m.models.data.phantoms.render import line_integrals, render


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed_and_readable_by_the_loader(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 3, 2, size=32, seed=7, progress=False)
    generate_dataset(tmp_path / "b", 3, 2, size=32, seed=7, progress=False)
    generate_dataset(tmp_path / "c", 3, 2, size=32, seed=8, progress=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert {k for k in fa if k.endswith(".jpg")}.isdisjoint(fc) or any(
        fa[k] != fc.get(k) for k in fa if k.endswith(".jpg")
    )
    assert fa["mimic-cxr-2.0.0-metadata.csv"] != fc["mimic-cxr-2.0.0-metadata.csv"]
    for name in (
        "mimic-cxr-2.0.0-chexpert.csv",
        "mimic-cxr-2.0.0-metadata.csv",
        "mimic-cxr-2.0.0-split.csv",
        "hosp/patients.csv",
        "hosp/omr.csv",
    ):
        assert name in fa

    samples = load_dataset(tmp_path / "a", "mimic")
    assert len(samples) == 5
    assert sum(s.normal for s in samples) == 3
    assert all(s.split != "train" for s in samples if not s.normal)  # one-class training
    truth = {str(c.study_id): c for c in a.cases}
    for s in samples:
        case = truth[s.study_id]
        assert s.values["view"] == case.ehr.view and s.values["sex"] == case.ehr.sex
        assert s.values["age"] == round(case.ehr.age)
        if s.values["bmi"] is not None:  # closest value (or tie mean) recovers the truth
            assert abs(float(s.values["bmi"]) - case.ehr.bmi) < 0.1
        if s.values["height"] is not None:
            assert abs(float(s.values["height"]) - case.ehr.height_cm) < 0.3
        assert set(s.findings) == set(case.labels)
    manifest = json.loads((tmp_path / "a" / "phantoms.json").read_text())
    assert manifest["seed"] == 7 and len(manifest["cases"]) == 5


def _with(case, **ehr):  # type: ignore[no-untyped-def]
    return dataclasses.replace(case, ehr=dataclasses.replace(case.ehr, **ehr))


def _max_width(mask: np.ndarray) -> int:
    return int(mask.sum(axis=1).max())


def test_ehr_effects_on_anatomy() -> None:
    anatomy = load_anatomy()
    base = make_case(3, 0, False, "train", anatomy)
    # AP (portable, short SID, heart far from the detector) magnifies the heart against PA
    pa = _with(base, view="PA")
    pa = dataclasses.replace(pa, acquisition=dataclasses.replace(pa.acquisition, sid_mm=1800.0))
    ap = _with(base, view="AP")
    ap = dataclasses.replace(ap, acquisition=dataclasses.replace(ap.acquisition, sid_mm=1000.0))
    heart_pa = _max_width(render(pa, 96, 0, with_masks=True).heart)  # type: ignore[arg-type]
    heart_ap = _max_width(render(ap, 96, 0, with_masks=True).heart)  # type: ignore[arg-type]
    assert heart_ap > 1.08 * heart_pa, (heart_ap, heart_pa)
    # body habitus: the body is wider at a higher BMI
    widths = [
        _max_width(render(_with(base, bmi=b), 96, 0, with_masks=True, fov_mm=600).body)  # type: ignore
        for b in (18.0, 26.0, 38.0)
    ]
    assert widths[0] < widths[1] < widths[2], widths
    # bone density falls with age: less attenuation through the same bones
    young = line_integrals(_with(base, age=25.0), 48, anatomy)[0]
    old = line_integrals(_with(base, age=85.0), 48, anatomy)[0]
    assert (young >= old - 1e-6).all() and (young - old).max() > 0.2
    # the heart scale drives the heart's projected width
    big = dataclasses.replace(pa, heart_scale=pa.heart_scale + CARDIOMEGALY_EXTRA)
    assert _max_width(render(big, 96, 0, with_masks=True).heart) > 1.1 * heart_pa  # type: ignore[arg-type]


def test_cardiomegaly_is_relative_to_habitus() -> None:
    thin = PatientEhr("F", 50.0, 160.0, 48.6, 19.0, 118.0, 70.0, "PA")
    heavy = PatientEhr("M", 50.0, 178.0, 126.7, 40.0, 140.0, 85.0, "PA")
    # an enlarged heart for the thin patient is no larger than a normal heart for the heavy one
    assert expected_heart_scale(thin) + CARDIOMEGALY_EXTRA < expected_heart_scale(heavy)


def test_hidden_heart_design_puts_the_heart_size_out_of_the_images_sight() -> None:
    """``hidden-heart``: blood pressure (no image trace of its own) moves the normal heart scale by more
    than its cardiomegaly margin, so the same enlarged heart is normal for one patient and not another."""
    hidden, standard = DESIGNS["hidden-heart"], DESIGNS["standard"]
    low = PatientEhr("F", 50.0, 165.0, 68.1, 25.0, 105.0, 70.0, "PA")
    high = dataclasses.replace(low, systolic=160.0)  # the same habitus, so the same image without the heart
    assert expected_heart_scale(high, hidden) - expected_heart_scale(low, hidden) > hidden.cardiomegaly_extra
    assert expected_heart_scale(high) - expected_heart_scale(low) < standard.cardiomegaly_extra
    # the design changes the heart sizes only: the same patients, acquisitions and findings
    a, b = make_cases(6, 6, 2, design="standard"), make_cases(6, 6, 2, design="hidden-heart")
    assert [(c.ehr, c.acquisition, c.findings, c.split) for c in a] == [
        (c.ehr, c.acquisition, c.findings, c.split) for c in b
    ]
    for c in b:
        extra = c.heart_scale - c.expected_heart_scale
        enlarged = "Cardiomegaly" in c.labels
        assert (extra >= hidden.cardiomegaly_extra) if enlarged else abs(extra) < 0.1, (c.labels, extra)
    with pytest.raises(ValueError, match="unknown phantom design"):
        make_cases(1, 0, 0, design="nope")


def test_focal_findings_change_the_image_locally() -> None:
    anatomy = load_anatomy()
    base = make_case(5, 1, False, "train", anatomy)
    clean = render(base, 64, 0).image
    for kind in ("nodule", "consolidation", "effusion"):
        rng = np.random.default_rng(1)
        finding: Finding = sample_finding(rng, anatomy, kind)  # type: ignore[arg-type]
        img = render(dataclasses.replace(base, findings=(finding,)), 64, 0).image
        diff = np.abs(img - clean)
        changed = diff > 0.08
        assert changed.any(), kind
        assert changed.mean() < 0.25, (kind, changed.mean())  # focal, not a global change


def test_phantoms_command(tmp_path: Path) -> None:
    out = tmp_path / "ph"
    res = CliRunner().invoke(
        app,
        [
            "phantoms",
            "--out",
            str(out),
            "--normal",
            "3",
            "--abnormal",
            "2",
            "--size",
            "32",
            "--seed",
            "1",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert sum(v["normal"] + v["abnormal"] for v in summary["splits"].values()) == 5
    assert len(list((out / "files").rglob("*.jpg"))) == 5
    bad = CliRunner().invoke(app, ["phantoms", "--out", str(out), "--split", "1,2"])
    assert bad.exit_code != 0
    bad = CliRunner().invoke(app, ["phantoms", "--out", str(out), "--design", "nope"])
    assert bad.exit_code != 0 and "hidden-heart" in bad.output
    hidden = tmp_path / "hidden"
    res = CliRunner().invoke(
        app, ["phantoms", "--out", str(hidden), "--normal", "1", "--abnormal", "0", "--size", "16",
              "--design", "hidden-heart", "--quiet"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((hidden / "phantoms.json").read_text())["design"]["name"] == "hidden-heart"
    # the folder's manifest rebuilds the same cases, with its design, seed and size
    written = PhantomSet.read(hidden)
    assert (written.design, written.seed, written.size) == (DESIGNS["hidden-heart"], 0, 16)
    assert written.cases == tuple(make_cases(1, 0, 0, design="hidden-heart"))
    assert PhantomSet.read(out).design == DESIGNS["standard"]
