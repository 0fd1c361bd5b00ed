"""Is one model's AUROC higher than another's on the same images? A paired, stratified bootstrap.

Reads two ``diff3m evaluate`` reports of the same split (their ``cases``), resamples normal and abnormal
images separately with replacement, the same draw for both models, and reports the AUROC difference
(B - A) with a 95 % percentile interval and the share of resamples where B does not beat A (a one-sided
bootstrap p-value). Overall and for each finding (that finding's images against all normals).

Usage:

    python bench/paired_auroc.py A.json B.json [--resamples 2000] [--seed 0] [--out OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score


def load_cases(path: Path) -> dict[str, dict[str, Any]]:
    """study_id -> case of one evaluate report; an error if the report has no per-image cases."""
    report = json.loads(path.read_text())
    if "cases" not in report:
        raise SystemExit(f"{path} has no per-image cases: re-run diff3m evaluate with this version")
    return {c["study_id"]: c for c in report["cases"]}


def paired_bootstrap(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, resamples: int, rng: np.random.Generator
) -> dict[str, float]:
    """AUROC of a and b on labels y, their difference and its bootstrap interval and p-value."""
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    diffs = np.empty(resamples)
    for i in range(resamples):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        diffs[i] = roc_auc_score(y[idx], b[idx]) - roc_auc_score(y[idx], a[idx])
    auc_a, auc_b = roc_auc_score(y, a), roc_auc_score(y, b)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {
        "auroc_a": float(auc_a),
        "auroc_b": float(auc_b),
        "difference": float(auc_b - auc_a),
        "ci95": [float(low), float(high)],
        "p_b_not_better": float((diffs <= 0).mean()),
        "n_abnormal": int(pos.size),
        "n_normal": int(neg.size),
    }


def compare(path_a: Path, path_b: Path, resamples: int, seed: int) -> dict[str, Any]:
    """Overall and per-finding paired comparison of two reports on the same images."""
    ca, cb = load_cases(path_a), load_cases(path_b)
    if set(ca) != set(cb):
        raise SystemExit("the two reports scored different images")
    ids = sorted(ca)
    normal = np.array([ca[i]["normal"] for i in ids])
    a = np.array([ca[i]["score"] for i in ids])
    b = np.array([cb[i]["score"] for i in ids])
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"a": str(path_a), "b": str(path_b), "resamples": resamples, "seed": seed,
                           "overall": paired_bootstrap(~normal, a, b, resamples, rng), "per_finding": {}}
    findings = sorted({f for i in ids for f in ca[i]["findings"]})
    for finding in findings:
        keep = normal | np.array([finding in ca[i]["findings"] for i in ids])
        out["per_finding"][finding] = paired_bootstrap(~normal[keep], a[keep], b[keep], resamples, rng)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", type=Path, help="the reference model's evaluate report")
    ap.add_argument("b", type=Path, help="the compared model's evaluate report (same images)")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = compare(args.a, args.b, args.resamples, args.seed)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"B = {args.b.name} against A = {args.a.name}, {args.resamples} paired resamples")
    print("| | AUROC A | AUROC B | B - A | 95 % interval | p (B not better) |")
    print("|---|---|---|---|---|---|")
    rows = [("overall", result["overall"]), *result["per_finding"].items()]
    for name, r in rows:
        print(f"| {name} | {r['auroc_a']:.3f} | {r['auroc_b']:.3f} | {r['difference']:+.3f} "
              f"| {r['ci95'][0]:+.3f} .. {r['ci95'][1]:+.3f} | {r['p_b_not_better']:.3f} |")


if __name__ == "__main__":
    main()
