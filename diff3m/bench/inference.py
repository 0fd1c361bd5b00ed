"""Inference benchmark: seconds per image of our default scoring vs the published recipe, same weights.

The published recipe is DDIM inversion to noise level 400 then DDIM denoising back, 399 + 399 steps, one
image at a time. Our default is the checkpoint's own steps and noise level, batched. Both run through
``Diff3MScorer`` on the same loaded weights and are measured in alternating rounds so that a shared,
busy CPU slows both alike; the speedup is the ratio of the medians. The recipe may be timed on a subset
of its steps (every step costs one network pass, whatever its timestep) and scaled; the output says so.
Optionally both are scored on a labelled phantom set to compare their AUROC on the same weights.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diff3m.bench.machine import Machine, machine_info

if TYPE_CHECKING:
    from diff3m.models.inference import Diff3MScorer
    from diff3m.models.preprocess import PreparedImage

RECIPE_NOISE_LEVEL = 400  # L of the published recipe
RECIPE_STEPS = 399  # DDIM steps each way (every timestep 0..399)
RECIPE_BATCH = 1
RECIPE: dict[str, Any] = {
    "steps": RECIPE_STEPS,
    "noise_level": RECIPE_NOISE_LEVEL,
    "encoding": "inversion",
    "draws": 1,
}

Item = tuple["PreparedImage", dict[str, Any]]


@dataclass(frozen=True)
class AurocComparison:
    """AUROC of the default and of the recipe on the same images and weights."""

    data: str
    split: str
    n_normal: int
    n_abnormal: int
    default_auroc: float
    reference_auroc: float
    difference: float  # default - reference
    reference_batch_size: int  # DDIM here is deterministic: batching changes the time, not the scores
    score_name: str
    seconds: float


@dataclass(frozen=True)
class InferenceBench:
    """Result of ``diff3m bench inference``."""

    checkpoint: str
    model_version: str
    profile: str
    machine: Machine
    images: int
    batch_size: int
    rounds: int
    default_steps: int
    default_noise_level: int
    default_passes_per_image: int
    default_seconds_per_image: float
    reference_steps: int
    reference_noise_level: int
    reference_batch_size: int
    reference_passes_per_image: int
    reference_seconds_per_image: float
    reference_timed_passes: int  # network passes actually run per recipe measurement
    reference_scaled: bool  # True: timed on a subset of the recipe's steps and scaled to all of them
    reference_note: str
    speedup: float
    default_runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    speedup_runs: list[float] = field(default_factory=list)
    auroc: AurocComparison | None = None

    def as_dict(self) -> dict[str, Any]:
        """Flat JSON-ready form: the headline numbers at the top level, machine and AUROC nested."""
        out = asdict(self)
        out["machine"] = self.machine.as_dict()
        out["device"] = self.machine.device
        out["torch_version"] = self.machine.torch
        out["threads"] = self.machine.torch_threads
        return out


def synthetic_items(n: int, seed: int = 0, rows: int = 512, cols: int = 480) -> list[Item]:
    """``n`` chest-like images (two dark lungs on a bright body, noise) with typical EHR values.

    The cost of scoring does not depend on the pixel values, so timing needs no real data.
    """
    from diff3m.models.preprocess import prepare_array

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols] / np.array([rows, cols], dtype=np.float64)[:, None, None]
    items: list[Item] = []
    for i in range(n):
        img = 0.8 - 0.4 * np.exp(-((xx - 0.3) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
        img -= 0.4 * np.exp(-((xx - 0.7) ** 2 / 0.02 + (yy - 0.5) ** 2 / 0.08))
        img += 0.02 * rng.standard_normal((rows, cols))
        ehr = {"sex": "M" if i % 2 else "F", "age": 40.0 + i, "view": "PA"}
        items.append((prepare_array(np.clip(img, 0, 1)), ehr))
    return items


def default_passes(noise_level: int, steps: int, encoding: str = "inversion", draws: int = 1) -> int:
    """Network passes per image: inversion + denoising, or ``draws`` denoising runs from noise."""
    from diff3m.models.schedule import timestep_grid

    steps_down = len(timestep_grid(noise_level, steps)) - 1
    return 2 * steps_down if encoding == "inversion" else draws * steps_down


def _time(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def time_default(scorer: Diff3MScorer, items: Sequence[Item], batch_size: int) -> float:
    """Seconds per image of ``score_batch`` with the checkpoint's default steps and noise level."""
    return _time(lambda: scorer.score_batch(items, batch_size=batch_size)) / len(items)


def time_recipe(scorer: Diff3MScorer, item: Item, timed_steps: int) -> float:
    """Seconds for one image through the published recipe (batch 1).

    With ``timed_steps`` < 399 the recipe runs ``timed_steps`` of its inversion and as many of its
    denoising steps; the per-pass time is scaled to all 798 passes and added to the fixed per-image
    cost (preprocessing, EHR condition, map and scores), measured by a 1 + 1 step run.
    """
    from diff3m.models.schedule import timestep_grid

    if timed_steps >= RECIPE_STEPS:
        return _time(lambda: scorer.score_batch([item], batch_size=1, **RECIPE))
    import torch

    img, ehr = item
    grid_img, _ = img.to_grid(scorer.image_size)
    x0 = torch.from_numpy(grid_img[None, None]).to(scorer.device)
    grid = timestep_grid(RECIPE_NOISE_LEVEL, RECIPE_STEPS)[: timed_steps + 1]
    use_ehr = scorer.config.use_ehr
    partial = _time(lambda: scorer.reconstruct(x0, [ehr], grid, use_ehr, encoding="inversion"))
    per_pass = partial / (2 * timed_steps)
    one_step = _time(lambda: scorer.score_batch([item], batch_size=1, **{**RECIPE, "steps": 1}))
    return one_step + (2 * RECIPE_STEPS - 2) * per_pass


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def compare_auroc(
    scorer: Diff3MScorer,
    data: Path,
    layout: str,
    n_images: int,
    batch_size: int,
    split: str | None = None,
) -> AurocComparison:
    """AUROC of the default and of the recipe on a balanced subset of ``data`` (the same images)."""
    from sklearn.metrics import roc_auc_score

    from diff3m.models.data import load_dataset
    from diff3m.models.evaluate import choose_split
    from diff3m.models.preprocess import load_image

    samples = choose_split(load_dataset(data, layout), split)
    normals = [s for s in samples if s.normal]
    abnormals = [s for s in samples if not s.normal]
    half = max(1, n_images // 2)
    chosen = normals[:half] + abnormals[: n_images - len(normals[:half])]
    labels = [0 if s.normal else 1 for s in chosen]
    if len(set(labels)) != 2:
        raise ValueError(
            f"{data} ({samples[0].split if samples else 'no'} split) needs normal and abnormal images"
        )
    items: list[Item] = [(load_image(s.path), dict(s.values)) for s in chosen]
    t0 = time.perf_counter()
    default = [r.score for r in scorer.score_batch(items, batch_size=batch_size)]
    _log(f"auroc: default scored {len(items)} images in {time.perf_counter() - t0:.0f} s")
    reference: list[float] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        res = scorer.score_batch(chunk, batch_size=batch_size, **RECIPE)
        reference += [r.score for r in res]
        _log(f"auroc: recipe scored {len(reference)}/{len(items)} images, {time.perf_counter() - t0:.0f} s")
    d_auc = float(roc_auc_score(labels, default))
    r_auc = float(roc_auc_score(labels, reference))
    return AurocComparison(
        data=str(data),
        split=chosen[0].split,
        n_normal=labels.count(0),
        n_abnormal=labels.count(1),
        default_auroc=d_auc,
        reference_auroc=r_auc,
        difference=d_auc - r_auc,
        reference_batch_size=batch_size,
        score_name=scorer.config.score_name,
        seconds=time.perf_counter() - t0,
    )


def run(
    checkpoint: str,
    images: int = 8,
    batch_size: int = 8,
    device: str = "auto",
    rounds: int = 3,
    recipe_steps: int = 20,
    threads: int | None = None,
    auroc_data: Path | None = None,
    auroc_layout: str = "mimic",
    auroc_images: int = 24,
    auroc_split: str | None = None,
) -> InferenceBench:
    """Load the checkpoint once and measure default vs recipe in ``rounds`` alternating rounds."""
    import torch

    from diff3m.models.inference import Diff3MScorer

    if images < 1 or batch_size < 1 or rounds < 1 or recipe_steps < 1:
        raise ValueError("images, batch size, rounds and recipe steps must be at least 1")
    if threads:  # the scorer takes its CPU threads from this variable
        os.environ["DIFF3M_CPU_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    scorer = Diff3MScorer.load(checkpoint, device=device)
    machine = machine_info(str(scorer.device))
    items = synthetic_items(images)
    timed = min(recipe_steps, RECIPE_STEPS)
    scorer.score_batch(items[:batch_size], steps=1, batch_size=batch_size)  # warm-up (allocator, kernels)
    d_runs, r_runs = [], []
    for r in range(rounds):
        d_runs.append(time_default(scorer, items, batch_size))
        r_runs.append(time_recipe(scorer, items[r % len(items)], timed))
        _log(f"round {r + 1}/{rounds}: default {d_runs[-1]:.3f} s/image, recipe {r_runs[-1]:.2f} s/image")
    d_med, r_med = statistics.median(d_runs), statistics.median(r_runs)
    scaled = timed < RECIPE_STEPS
    note = (
        f"recipe timed on {timed} + {timed} of its {RECIPE_STEPS} + {RECIPE_STEPS} steps and scaled to all "
        f"{2 * RECIPE_STEPS} passes (each pass costs the same at any timestep), plus its measured fixed cost"
        if scaled
        else f"recipe timed in full ({2 * RECIPE_STEPS} passes per image)"
    )
    auroc = None
    if auroc_data is not None:
        auroc = compare_auroc(scorer, auroc_data, auroc_layout, auroc_images, batch_size, auroc_split)
    return InferenceBench(
        checkpoint=str(checkpoint),
        model_version=scorer.version,
        profile=scorer.profile_name,
        machine=machine,
        images=images,
        batch_size=batch_size,
        rounds=rounds,
        default_steps=scorer.config.steps,
        default_noise_level=scorer.config.noise_level,
        default_passes_per_image=default_passes(
            scorer.config.noise_level, scorer.config.steps, scorer.config.encoding, scorer.config.draws
        ),
        default_seconds_per_image=d_med,
        reference_steps=RECIPE_STEPS,
        reference_noise_level=RECIPE_NOISE_LEVEL,
        reference_batch_size=RECIPE_BATCH,
        reference_passes_per_image=2 * RECIPE_STEPS,
        reference_seconds_per_image=r_med,
        reference_timed_passes=2 * timed,
        reference_scaled=scaled,
        reference_note=note,
        speedup=r_med / d_med,
        default_runs=d_runs,
        reference_runs=r_runs,
        speedup_runs=[r / d for d, r in zip(d_runs, r_runs, strict=True)],
        auroc=auroc,
    )


def markdown(res: InferenceBench) -> str:
    """A RESULTS.md section for one run."""
    m = res.machine
    lines = [
        m.heading(),
        "",
        f"Checkpoint `{res.checkpoint}` ({res.model_version}, profile {res.profile}); {res.images} synthetic "
        f"512x480 images; median of {res.rounds} alternating rounds. {res.reference_note}.",
        "",
        "| inference | steps each way | noise level | batch | passes / image | s / image |",
        "|---|---:|---:|---:|---:|---:|",
        f"| default (checkpoint) | {res.default_steps} | {res.default_noise_level} | {res.batch_size} | "
        f"{res.default_passes_per_image} | {res.default_seconds_per_image:.3f} |",
        f"| published recipe | {res.reference_steps} | {res.reference_noise_level} | "
        f"{res.reference_batch_size} | {res.reference_passes_per_image} | "
        f"{res.reference_seconds_per_image:.2f} |",
        "",
        f"**Speedup {res.speedup:.1f}x** (per round: {', '.join(f'{s:.1f}' for s in res.speedup_runs)}).",
    ]
    if res.auroc:
        a = res.auroc
        lines += [
            "",
            f"AUROC on the same weights, {a.n_normal} normal + {a.n_abnormal} abnormal images of `{a.data}` "
            f"({a.split} split, score {a.score_name}): default **{a.default_auroc:.3f}**, recipe "
            f"**{a.reference_auroc:.3f}** (difference {a.difference:+.3f}); {a.seconds / 60:.0f} min.",
        ]
    return "\n".join(lines) + "\n"
