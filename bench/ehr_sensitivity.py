"""Does a trained model's reconstruction depend on the EHR at all? Change the EHR, hold the image.

For test-split normals, the reconstruction x_hat (the checkpoint's noise encoding and draws, the same
draws for every variant) is computed with the true EHR, with systolic pressure set to a low and a high
value, and with the EHR hidden. If the EHR steers the model, the low- and high-pressure reconstructions
differ around the heart, most of all at high noise levels where the image no longer pins the heart's
outline. Reported per noise level: the mean |x_hat(high) - x_hat(low)| and |x_hat(true) -
x_hat(hidden)| against the mean residual |x - x_hat(true)|, and the largest per-pixel change.

On phantoms the script also renders each patient with the heart scale that the generator expects at
the low and at the high pressure (all else equal): ``followed`` is the share of that true image change
that the reconstructions reproduce (projection of x_hat(high) - x_hat(low) on it; 1: the model draws the
heart the EHR implies, 0: it ignores the pressure), ``cosine`` how well the two changes align.

Usage:

    python bench/ehr_sensitivity.py --checkpoint var/hidden/ehr --data var/phantoms-hidden \\
        --out bench/results/hidden-heart/sensitivity.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diff3m.models.calibrate import readable
from diff3m.models.data import CxrSample, load_dataset
from diff3m.models.data.phantoms import PhantomSet
from diff3m.models.data.phantoms.cases import expected_heart_scale
from diff3m.models.data.phantoms.render import render
from diff3m.models.inference import Diff3MScorer
from diff3m.models.schedule import timestep_grid

LEVELS = (50, 150, 400, 700)
PRESSURES = (95.0, 165.0)  # mmHg: 60 apart, about 4 sd of the phantoms' spread


def true_change(data: Path, samples: list[CxrSample], size: int) -> torch.Tensor | None:
    """Rendered image at the high pressure's expected heart minus at the low one's [N, 1, S, S].

    None unless ``data`` is a phantom folder rendered at the model's grid size.
    """
    if not (data / "phantoms.json").is_file():
        return None
    phantoms = PhantomSet.read(data)
    if phantoms.size != size:
        return None
    by_subject = {str(c.subject_id): c for c in phantoms.cases}
    maps = []
    for s in samples:
        case = by_subject[s.subject_id]
        imgs = []
        for p in PRESSURES:
            scale = expected_heart_scale(dataclasses.replace(case.ehr, systolic=p), phantoms.design)
            imgs.append(render(dataclasses.replace(case, heart_scale=scale), size, phantoms.seed).image)
        maps.append(imgs[1] - imgs[0])
    return torch.from_numpy(np.stack(maps).astype(np.float32))[:, None]


def sensitivity(
    ckpt: str, data: Path, n: int, levels: tuple[int, ...], guidance: float | None = None
) -> dict[str, Any]:
    """Mean and largest reconstruction changes per noise level, against the mean residual.

    ``guidance``: the EHR guidance scale (default: the checkpoint's).
    """
    scorer = Diff3MScorer.load(ckpt, device="cpu")
    scale = scorer.config.ehr_guidance if guidance is None else guidance
    normals = [s for s in load_dataset(data, "mimic") if s.normal and s.split == "test"][:n]
    items = readable(normals)
    x0 = torch.from_numpy(np.stack([img.to_grid(scorer.image_size)[0] for img, _ in items]))[:, None]
    true = [dict(v) for _, v in items]
    low, high = ([{**v, "systolic": p} for v in true] for p in PRESSURES)
    truth = true_change(data, normals, scorer.image_size) if len(items) == len(normals) else None
    rows = []
    for level in levels:
        grid = timestep_grid(level, scorer.config.steps)
        draws = scorer.config.draws

        def rec(values: list[dict[str, Any]], use_ehr: bool = True, grid: list[int] = grid,
                draws: int = draws) -> torch.Tensor:
            return scorer.reconstruct(x0, values, grid, use_ehr, 0, scorer.config.encoding, draws, scale)

        base, lo, hi, hidden = rec(true), rec(low), rec(high), rec(true, use_ehr=False)
        rows.append({
            "noise_level": level,
            "mean_residual": float((x0 - base).abs().mean()),
            "mean_change_pressure": float((hi - lo).abs().mean()),
            "max_change_pressure": float((hi - lo).abs().amax(dim=(1, 2, 3)).mean()),
            "mean_change_hidden": float((base - hidden).abs().mean()),
            "max_change_hidden": float((base - hidden).abs().amax(dim=(1, 2, 3)).mean()),
        })
        if truth is not None:
            d, t = (hi - lo).flatten(1).double(), truth.flatten(1).double()
            rows[-1]["followed"] = float(((d * t).sum(1) / (t * t).sum(1)).mean())
            rows[-1]["cosine"] = float(torch.nn.functional.cosine_similarity(d, t, dim=1).mean())
    return {"checkpoint": scorer.version, "data": str(data), "n": len(items), "pressures": PRESSURES,
            "encoding": scorer.config.encoding, "draws": scorer.config.draws, "ehr_guidance": scale,
            "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=48, help="test normals")
    ap.add_argument("--levels", default=",".join(map(str, LEVELS)))
    ap.add_argument("--ehr-guidance", type=float, default=None, help="default: the checkpoint's")
    args = ap.parse_args()
    levels = tuple(int(v) for v in args.levels.split(","))
    result = sensitivity(args.checkpoint, args.data, args.n, levels, args.ehr_guidance)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['checkpoint']} on {result['n']} test normals of {result['data']}, "
          f"EHR guidance {result['ehr_guidance']:g}")
    print("| L | mean residual | pressure 95 vs 165: mean / max change | followed | cosine "
          "| EHR hidden: mean / max change |")
    print("|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['noise_level']} | {r['mean_residual']:.4f} | {r['mean_change_pressure']:.4f} / "
              f"{r['max_change_pressure']:.3f} | {r.get('followed', float('nan')):.2f} "
              f"| {r.get('cosine', float('nan')):.2f} "
              f"| {r['mean_change_hidden']:.4f} / {r['max_change_hidden']:.3f} |")


if __name__ == "__main__":
    main()
