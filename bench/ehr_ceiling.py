"""How much AUROC the EHR can add on the phantom test split at most, from the generator's own truth.

The ablation asks for EHR >= +0.05 AUROC over an image-only model. On the phantoms the EHR enters the
abnormal class only through cardiomegaly (a heart a design's ``cardiomegaly_extra`` larger than the patient's
expected heart scale); the focal findings do not depend on it. This script measures, without any
model:

1. the best cardiomegaly-vs-normal AUROC of three ideal readers of the true heart scale: one that knows
   nothing of the patient, one that also knows what the image shows of the habitus (BMI and sex: body
   width and breast shadows), one that knows the whole EHR (adds blood pressure);
2. how much of the EHR the pixels themselves give away: ridge / logistic regression from the 64 px
   training normals to BMI, age, systolic pressure and sex, scored on the test normals;
3. the ceiling on the overall EHR gain: if the EHR made the image-only arm's cardiomegaly detection
   perfect and changed nothing else, overall AUROC would rise by (1 - its cardiomegaly AUROC) x the
   share of abnormal test cases with cardiomegaly.

Usage:

    python bench/ehr_ceiling.py [--report --machine "..."]
    python bench/ehr_ceiling.py --data var/phantoms-hidden \
        --noehr bench/results/hidden-heart/noehr.json --out bench/results/hidden-heart/ceiling.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.metrics import r2_score, roc_auc_score

from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import PhantomSet
from diff3m.models.data.phantoms.cases import HeartDesign, PhantomCase, expected_heart_scale

DATA = Path("var/phantoms-2500")  # scripts/train_demo.py PHANTOMS
NOEHR = Path("bench/results/cpu-noise/noehr.json")  # the image-only arm of the ablation
OUT = Path("bench/results/ehr-ceiling.json")


def visible_expected(case: PhantomCase, design: HeartDesign) -> float:
    """The expected heart scale from what the image shows (BMI, sex), blood pressure at the mean."""
    return expected_heart_scale(dataclasses.replace(case.ehr, systolic=125.0), design)


def readers(cases: list[PhantomCase], design: HeartDesign) -> dict[str, float]:
    """Cardiomegaly-vs-normal AUROC of ideal readers of the true heart scale (test split)."""
    test = [c for c in cases if c.split == "test" and (c.normal or "Cardiomegaly" in c.labels)]
    y = np.array([0 if c.normal else 1 for c in test])
    heart = np.array([c.heart_scale for c in test])
    visible = np.array([visible_expected(c, design) for c in test])
    expected = np.array([c.expected_heart_scale for c in test])
    return {
        "heart_size_alone": float(roc_auc_score(y, heart)),
        "heart_size_given_image_habitus": float(roc_auc_score(y, heart - visible)),
        "heart_size_given_full_ehr": float(roc_auc_score(y, heart - expected)),
        "n_normal": int((y == 0).sum()),
        "n_cardiomegaly": int(y.sum()),
    }


def ehr_from_pixels(data: Path) -> dict[str, float]:
    """How well the pixels of a normal phantom predict its EHR (fit on train normals, test normals)."""
    samples = [s for s in load_dataset(data, "mimic") if s.normal and s.split in ("train", "test")]

    def pixels(split: str) -> np.ndarray:
        return np.stack([np.asarray(Image.open(s.path).convert("L"), dtype=np.float32).ravel() / 255.0
                         for s in samples if s.split == split])

    def values(split: str, name: str) -> np.ndarray:
        return np.array([s.values.get(name) for s in samples if s.split == split], dtype=object)

    x_tr, x_te = pixels("train"), pixels("test")
    out: dict[str, float] = {}
    for name in ("bmi", "age", "systolic"):
        y_tr, y_te = values("train", name), values("test", name)
        ok_tr = np.array([v is not None for v in y_tr])
        ok_te = np.array([v is not None for v in y_te])
        model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(x_tr[ok_tr], y_tr[ok_tr].astype(float))
        out[f"r2_{name}"] = float(r2_score(y_te[ok_te].astype(float), model.predict(x_te[ok_te])))
    sex_tr, sex_te = values("train", "sex"), values("test", "sex")
    ok_tr = np.array([v is not None for v in sex_tr])
    ok_te = np.array([v is not None for v in sex_te])
    with warnings.catch_warnings():  # scikit-learn's notices of changing defaults, not about this fit
        warnings.simplefilter("ignore", FutureWarning)
        clf = LogisticRegressionCV(Cs=5, max_iter=2000).fit(x_tr[ok_tr], sex_tr[ok_tr].astype(str))
    prob = clf.predict_proba(x_te[ok_te])[:, list(clf.classes_).index(clf.classes_[1])]
    out["auroc_sex"] = float(roc_auc_score(sex_te[ok_te].astype(str) == clf.classes_[1], prob))
    return out


def ceiling(noehr: dict[str, Any]) -> dict[str, float]:
    """The overall AUROC the image-only arm would reach with perfect cardiomegaly detection."""
    cardio = noehr["per_finding_auroc"]["Cardiomegaly"]
    share = cardio["n"] / noehr["n_abnormal"]
    return {
        "image_only_auroc": noehr["auroc"],
        "image_only_cardiomegaly_auroc": cardio["auroc"],
        "cardiomegaly_share_of_abnormal": share,
        "max_ehr_gain": (1.0 - cardio["auroc"]) * share,
    }


def report(r: dict[str, Any], machine: str) -> str:
    """The RESULTS.md section."""
    rd, px, c = r["readers"], r["pixels"], r["ceiling"]
    return "\n".join([
        f"\n## EHR gain ceiling on the {r['design']} phantoms ({r['date']})\n",
        f"Machine: {machine}. `bench/ehr_ceiling.py`, numbers in `{r['out']}`. No model: "
        "the phantom generator's own truth, test split.\n",
        f"Ideal readers of the true heart scale, cardiomegaly ({rd['n_cardiomegaly']}) vs normal "
        f"({rd['n_normal']}); cardiomegaly = expected scale + {r['cardiomegaly_extra']:.2f}:\n",
        "| reader knows | AUROC |",
        "|---|---|",
        f"| heart size only | {rd['heart_size_alone']:.3f} |",
        f"| heart size + habitus the image shows (BMI, sex) | {rd['heart_size_given_image_habitus']:.3f} |",
        f"| heart size + the whole EHR (adds blood pressure) | {rd['heart_size_given_full_ehr']:.3f} |",
        "",
        "What the pixels of a normal phantom give away (linear models fit on the 64 px training normals, "
        f"scored on test normals): BMI R^2 {px['r2_bmi']:.2f}, age R^2 {px['r2_age']:.2f}, systolic "
        f"pressure R^2 {px['r2_systolic']:.2f}, sex AUROC {px['auroc_sex']:.2f}.\n",
        f"Ceiling: the image-only arm scores {c['image_only_auroc']:.3f} overall and "
        f"{c['image_only_cardiomegaly_auroc']:.3f} on cardiomegaly, which is "
        f"{100 * c['cardiomegaly_share_of_abnormal']:.0f} % of the abnormal test cases. Even if the EHR "
        f"made cardiomegaly detection perfect, overall AUROC would rise by at most "
        f"**{c['max_ehr_gain']:+.3f}**; the focal findings do not depend on the EHR.\n",
    ]) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="phantom folder (gives the design)")
    ap.add_argument("--noehr", type=Path, default=NOEHR, help="evaluate JSON of the image-only arm")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--report", action="store_true", help="append the section to bench/RESULTS.md")
    ap.add_argument("--machine", default="", help="the machine it ran on, for the report")
    args = ap.parse_args()
    if args.report:
        text = report(json.loads(args.out.read_text()), args.machine or "unknown")
        with open("bench/RESULTS.md", "a") as f:
            f.write(text)
        print(text)
        return
    phantoms = PhantomSet.read(args.data)
    design = phantoms.design
    result = {
        "date": dt.date.today().isoformat(),
        "design": design.name,
        "out": str(args.out),
        "cardiomegaly_extra": design.cardiomegaly_extra,
        "readers": readers(list(phantoms.cases), design),
        "pixels": ehr_from_pixels(args.data),
        "ceiling": ceiling(json.loads(args.noehr.read_text())),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(report(result, args.machine or "this machine"))


if __name__ == "__main__":
    main()
