"""Reproduce the ``builtin:demo`` weights: phantoms -> two-stage training -> statistics and threshold.

Two recipes, as data (``RECIPES`` below), both on the same 2000 normal + 500 abnormal phantoms (split
0.80/0.05/0.15, so the test split holds 284 normal + 375 abnormal images):

* ``cpu`` (what ``builtin:demo`` ships, the default): the small ``demo-cpu`` network (0.27 M parameters in
  its main UNet), 4000 image-only steps, then 2000 PCM/IECA steps drawn below noise level 200 (the scorer
  works at L 50) with the EMA warm-up started again, batch 16: about an hour on 2 CPU cores.
  It scores with the ``noise`` encoding (L 50, one step, 8 draws) and ``normalized_max``.
* ``gpu``: the ``demo-gpu`` network (64 px, 3.7 M parameters) on a CUDA card with bf16 autocast, batch 64,
  scored with the published inversion, stage 2 over the whole schedule. Tried on a lent H200
  (bench/RESULTS.md, "GPU"): it did not beat the CPU weights of its time, so it is not what ships. A run is
  repeated step for step with the counts its ``recipe.json`` records:

      python scripts/train_demo.py --recipe gpu --steps N --stage1-steps M --out DIR

The EHR ablation shares stage 1 between its two arms (stage 1 never sees the EHR). ``builtin:demo`` is the
first arm; forking changes nothing, so one uninterrupted run (``make demo-weights``) trains the same weights:

      python scripts/train_demo.py --steps 4000 --keep-state --out var/std/stage1
      python scripts/train_demo.py --stage1-from var/std/stage1                        # builtin:demo
      python scripts/train_demo.py --stage1-from var/std/stage1 --no-ehr --out var/ablation/noehr

``--budget-seconds S`` replaces ``--steps``: a 40-step probe measures seconds per step of each stage on
this machine, then the run is sized to take about S seconds (``--stage1-fraction`` of the steps image-only).
The steps actually run go to ``recipe.json``, so a budgeted run can be repeated step for step.

After training, the residual statistics come from 200 training normals and the decision threshold is the
95th percentile of the scores of the validation-split normals (the test split is never seen), both
written into the checkpoint by ``train()``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import generate_dataset
from diff3m.models.inference import pick_device
from diff3m.models.profiles import DEMO, Profile
from diff3m.models.train import PREDATING, STATE_FILE, seconds_per_step, train


@dataclass(frozen=True)
class Recipe:
    """One reproducible way of making the demo weights."""

    profile: Profile
    phantoms: Path
    phantom_args: dict[str, Any]
    steps: int
    stage1_steps: int
    batch_size: int | None = None  # None: the profile's
    calibration: int = 60
    # stage 2: start the EMA warm-up again, and train only below this noise level (None: every one)
    stage2_ema_restart: bool = bool(PREDATING["stage2_ema_restart"])
    stage2_max_noise_level: int | None = PREDATING["stage2_max_noise_level"]
    stage2_masked_branch: bool = bool(PREDATING["stage2_masked_branch"])
    stage2_draw: str | None = PREDATING["stage2_draw"]  # timestep bands (None: uniform below the max)


DEMO_CPU = Profile(
    name="demo-cpu",
    image_size=64,
    base_channels=16,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(),  # the middle block keeps its self-attention
    norm_groups=8,
    # scoring: noise to L 50, one denoising step, 8 draws averaged, residual in units of the normal spread
    encoding="noise",
    noise_level=50,
    steps=1,
    draws=8,
    score_name="normalized_max",
    batch_size=16,
    lr=5e-4,
    ema_decay=0.999,
)

# the demo profile one level narrower at the bottom, one residual block per level: 3.7 M parameters
DEMO_GPU = replace(DEMO, name="demo-gpu", channel_mult=(1, 2, 2, 2), num_res_blocks=1, batch_size=64)

# 2000 normal + 500 abnormal 64 px phantoms; the test split holds 284 normal + 375 abnormal
PHANTOMS = Path("var/phantoms-2500")
PHANTOM_ARGS: dict[str, Any] = {
    "n_normal": 2000,
    "n_abnormal": 500,
    "size": 64,
    "seed": 0,
    "fractions": (0.8, 0.05, 0.15),
}

RECIPES = {
    "cpu": Recipe(
        profile=DEMO_CPU,
        phantoms=PHANTOMS,
        phantom_args=PHANTOM_ARGS,
        steps=6000,  # 4000 image-only DDPM steps + 2000 PCM + IECA steps, about an hour on 2 CPU cores
        stage1_steps=4000,
        calibration=100,
        stage2_ema_restart=True,
        stage2_max_noise_level=200,  # 4x the scoring level L 50: stage 2 trains where the scorer works
    ),
    "gpu": Recipe(
        profile=DEMO_GPU,
        phantoms=PHANTOMS,
        phantom_args=PHANTOM_ARGS,
        steps=12000,
        stage1_steps=7000,
        batch_size=64,
        calibration=100,
    ),
}
PROBE_STEPS = (20, 20)  # stage-1 and stage-2 steps of the speed probe


def ensure_phantoms(recipe: Recipe) -> Path:
    """Generate the recipe's phantom set unless a complete one is already there."""
    root = recipe.phantoms
    if not (root / "mimic-cxr-2.0.0-split.csv").exists():
        generate_dataset(root, **recipe.phantom_args)
    return root


def _phantom_record(root: Path) -> dict[str, Any]:
    """The training data: its folder and the phantom manifest's arguments (a --data folder's own)."""
    manifest = root / "phantoms.json"
    if not manifest.is_file():
        return {"data": str(root)}
    m = json.loads(manifest.read_text())
    keep = ("seed", "size", "n_normal", "n_abnormal", "split_fractions", "design")
    return {"data": str(root), **{k: m[k] for k in keep if k in m}}


def _seconds_per_step(log: Path, first: int, last: int) -> float:
    """Mean seconds per step between logged steps ``first`` and ``last`` of a train_log.csv."""
    return max(1e-4, seconds_per_step(log, first, last))


def size_by_budget(
    samples: list[Any], recipe: Recipe, args: argparse.Namespace, budget: float
) -> tuple[int, int]:
    """Steps (total, stage 1) that fill ``budget`` seconds, from a short probe run of both stages."""
    s1, s2 = PROBE_STEPS
    probe = Path(tempfile.mkdtemp(prefix="train-probe-"))
    try:
        started = time.time()
        train(
            samples,
            probe,
            profile=recipe.profile,
            steps=s1 + s2,
            stage1_steps=s1,
            use_ehr=not args.no_ehr,
            batch_size=recipe.batch_size,
            device=args.device,
            calibration_images=0,
            progress=False,
            resume=False,
            log_every=10,
        )
        log = probe / "train_log.csv"
        rate1 = _seconds_per_step(log, 10, s1)
        rate2 = _seconds_per_step(log, s1 + 10, s1 + s2)
        spent = time.time() - started
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    left = max(0.0, budget - spent - 15.0)  # 15 s for data loading, saving and calibration
    frac = args.stage1_fraction
    total = max(2, int(left / (frac * rate1 + (1 - frac) * rate2)))
    probe_result = {"probe_seconds_per_step": [round(rate1, 4), round(rate2, 4)], "steps": total}
    print(json.dumps({**probe_result, "stage1": int(total * frac)}), flush=True)
    return total, int(total * frac)


def stage2_options(args: argparse.Namespace, recipe: Recipe) -> dict[str, Any]:
    """``train()``'s stage-2 options from the flags: a flag left out is the recipe's value (``cpu``: EMA
    restarted, below noise level 200; ``gpu``: EMA running on, the whole schedule; both: lr scale 1) for a
    new run and ``None`` (the run's stored setting) when ``--resume`` finds a state."""
    keep = args.resume and (args.out / STATE_FILE).is_file()
    recipe_values = {
        **PREDATING,
        "stage2_ema_restart": recipe.stage2_ema_restart,
        "stage2_max_noise_level": recipe.stage2_max_noise_level,
        "stage2_masked_branch": recipe.stage2_masked_branch,
        "stage2_draw": recipe.stage2_draw,
    }
    given = {
        "stage2_ema_restart": args.stage2_ema_restart,
        "ehr_lr_scale": args.ehr_lr_scale,
        "stage2_max_noise_level": args.stage2_max_noise_level,
        "stage2_masked_branch": args.stage2_masked_branch,
        "stage2_draw": args.stage2_draw,
    }
    return {
        name: value if value is not None or keep else recipe_values[name] for name, value in given.items()
    }


def command(recipe: str, steps: int, stage1: int, use_ehr: bool, options: dict[str, Any]) -> str:
    """The command line that repeats a run whose stage-2 ``options`` were these (``training.json``'s).

    Every stage-2 setting is written out, so the line still means the same run when a recipe's defaults
    change; a run that stops after stage 1 has none to write."""
    line = f"python scripts/train_demo.py --recipe {recipe} --steps {steps} --stage1-steps {stage1}"
    line += "" if use_ehr else " --no-ehr"
    if steps > stage1:
        top = options["stage2_max_noise_level"] or RECIPES[recipe].profile.timesteps
        line += " --stage2-ema-restart" if options["stage2_ema_restart"] else " --no-stage2-ema-restart"
        line += f" --ehr-lr-scale {float(options['ehr_lr_scale']):g} --stage2-max-noise-level {top}"
        line += " --stage2-masked-branch" if options["stage2_masked_branch"] else " --no-stage2-masked-branch"
        line += f" --stage2-draw {options['stage2_draw']}" if options.get("stage2_draw") else ""
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``sys.argv`` when ``argv`` is None)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("diff3m/models/weights/demo"))
    parser.add_argument("--data", type=Path, help="phantom folder (default: the recipe's; made if missing)")
    parser.add_argument("--steps", type=int, help="total steps (default: the recipe's)")
    parser.add_argument("--stage1-steps", type=int, help="image-only DDPM steps (default: the recipe's)")
    parser.add_argument("--budget-seconds", type=float, help="size the run to this wall time (probe first)")
    parser.add_argument("--stage1-fraction", type=float, default=0.55, help="image-only share (budgeted run)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--no-ehr", action="store_true", help="image-only ablation (same budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--calibration", type=int, help="validation normals for the threshold")
    parser.add_argument("--stage1-from", type=Path, help="start from this run's finished stage 1 (shared)")
    parser.add_argument("--keep-state", action="store_true", help="keep OUT/train_state.pt (shared stage 1)")
    parser.add_argument(
        "--stage2-ema-restart",
        action=argparse.BooleanOptionalAction,
        help="start the EMA warm-up again when stage 2 begins (default: the recipe's, on in cpu, off in "
        "gpu, which predates it; --resume keeps the run's own setting)",
    )
    parser.add_argument(
        "--ehr-lr-scale",
        type=float,
        help="stage 2: the EHR tokens' learning rate as a multiple (default 1; --resume keeps the run's own)",
    )
    parser.add_argument(
        "--stage2-max-noise-level",
        type=int,
        help="stage 2 trains at timesteps below this (default: the recipe's, 200 in cpu, the whole "
        "schedule in gpu; --resume keeps the run's own)",
    )
    parser.add_argument(
        "--stage2-masked-branch",
        action=argparse.BooleanOptionalAction,
        help="stage 2 trains the masked branch, as published (default: the recipe's, on in both; --no-...: "
        "the noise loss alone, about 3x faster per step, noise encoding only; --resume keeps the run's own)",
    )
    parser.add_argument(
        "--stage2-draw",
        help="stage 2 draws its timesteps from these weighted bands, e.g. 0.5@49,0.5@100-199 "
        "(diff3m.models.timestep_draw; default: uniform below the max level; --resume keeps the run's own)",
    )
    parser.add_argument("--quiet", action="store_true")
    return parser.parse_args(argv)


def main() -> None:
    """Command-line entry point."""
    args = parse_args()
    recipe = RECIPES[args.recipe]
    torch.set_num_threads(args.threads)
    root = args.data or ensure_phantoms(recipe)
    samples = [s for s in load_dataset(root, "mimic") if s.split in ("train", "validate")]
    started = time.time()
    steps, stage1 = args.steps or recipe.steps, args.stage1_steps or recipe.stage1_steps
    if args.budget_seconds:
        steps, stage1 = size_by_budget(samples, recipe, args, args.budget_seconds)
    out = train(
        samples,
        args.out,
        profile=recipe.profile,
        steps=steps,
        use_ehr=not args.no_ehr,
        seed=0,
        stage1_steps=stage1,
        batch_size=recipe.batch_size,
        device=args.device,
        calibration_images=args.calibration or recipe.calibration,
        progress=not args.quiet,
        resume=args.resume,
        stage1_from=args.stage1_from,
        **stage2_options(args, recipe),
    )
    # train()'s resumable state is not shipped (it holds optimizer moments: 3x the weights)
    if not args.keep_state:
        (out / STATE_FILE).unlink(missing_ok=True)
    training = json.loads((out / "training.json").read_text()) if (out / "training.json").exists() else {}
    options = {**PREDATING, **training.get("options", {})}  # what the run used (a resumed run: its own)
    restart, scale = bool(options["stage2_ema_restart"]), float(options["ehr_lr_scale"])
    top, masked = options["stage2_max_noise_level"], bool(options["stage2_masked_branch"])
    dev = pick_device(args.device)
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    record = {
        "script": "scripts/train_demo.py",
        "recipe": args.recipe,
        "command": command(args.recipe, steps, stage1, not args.no_ehr, options),
        "stage1_from": str(args.stage1_from) if args.stage1_from else None,
        "phantoms": _phantom_record(root),
        "profile": recipe.profile.to_dict(),
        "steps": steps,
        "stage1_steps": stage1,
        "batch_size": recipe.batch_size or recipe.profile.batch_size,
        "use_ehr": not args.no_ehr,
        "stage2_ema_restart": restart,
        "ehr_lr_scale": scale,
        "stage2_max_noise_level": top,
        "stage2_masked_branch": masked,
        "stage2_draw": options["stage2_draw"],
        "wall_seconds": round(time.time() - started, 1),
        "train_seconds": training.get("seconds"),
        "machine": f"{platform.machine()}, {device}, torch {torch.__version__}, "
        f"{args.threads} CPU thread(s), Python {platform.python_version()}",
    }
    (out / "recipe.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({"out": str(out), **record}), flush=True)


if __name__ == "__main__":
    main()
