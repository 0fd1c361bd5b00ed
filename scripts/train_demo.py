"""Reproduce the ``builtin:demo`` weights: phantoms -> two-stage training -> threshold from validation.

Usage (what ``make demo-weights`` runs; about 15-20 minutes on the shared 2-core CPU):

    python scripts/train_demo.py [--out diff3m/models/weights/demo] [--no-ehr] [--steps 500]

1. ``diff3m phantoms`` (800 normal + 300 abnormal, 64 px, seed 0, split 0.65/0.10/0.25) into var/phantoms-demo
   unless it is already there;
2. ``train()`` on the normal train split with the DEMO_CPU recipe below (a CPU-sized variant of the
   ``demo`` profile: same 64 px grid and sampling recipe, narrower UNet, one residual block per level);
3. the decision threshold is the 95th percentile of the scores of the validation-split normals (the
   test split is never seen), written to the checkpoint's config.json by ``train()``'s calibration.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from diff3m.models.data import load_dataset
from diff3m.models.data.phantoms import generate_dataset
from diff3m.models.profiles import Profile

PHANTOMS = Path("var/phantoms-demo")
FRACTIONS = (0.65, 0.10, 0.25)
PHANTOM_ARGS = {"n_normal": 800, "n_abnormal": 300, "size": 64, "seed": 0, "fractions": FRACTIONS}
DEMO_CPU = Profile(
    name="demo-cpu",
    image_size=64,
    base_channels=16,
    channel_mult=(1, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(),  # the middle block keeps its self-attention
    norm_groups=8,
    noise_level=300,
    steps=10,
    batch_size=8,
    lr=5e-4,
    ema_decay=0.995,
)
STEPS = 500  # 400 image-only DDPM steps + 100 PCM + IECA steps (CPU budget; see docs/model-card.md)
STAGE1_STEPS = 400


def ensure_phantoms(root: Path = PHANTOMS) -> Path:
    """Generate the demo phantom set unless a complete one is already at ``root``."""
    if not (root / "mimic-cxr-2.0.0-split.csv").exists():
        generate_dataset(root, **PHANTOM_ARGS)  # type: ignore[arg-type]
    return root


def main() -> None:
    """Command-line entry point."""
    from diff3m.models.train import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("diff3m/models/weights/demo"))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--stage1-steps", type=int, default=STAGE1_STEPS, help="image-only DDPM steps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    parser.add_argument("--no-ehr", action="store_true", help="image-only ablation (same budget)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--calibration", type=int, default=60, help="validation normals for the threshold")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = ensure_phantoms()
    samples = [s for s in load_dataset(root, "mimic") if s.split in ("train", "validate")]
    started = time.time()
    out = train(
        samples,
        args.out,
        profile=DEMO_CPU,
        steps=args.steps,
        use_ehr=not args.no_ehr,
        seed=0,
        stage1_steps=args.stage1_steps,
        device="cpu",
        calibration_images=args.calibration,
        progress=not args.quiet,
        resume=args.resume,
    )
    # train()'s resumable state is not shipped (it holds optimizer moments: 3x the weights)
    (out / "train_state.pt").unlink(missing_ok=True)
    recipe = {
        "script": "scripts/train_demo.py",
        "phantoms": {**PHANTOM_ARGS, "fractions": list(FRACTIONS)},
        "profile": DEMO_CPU.to_dict(),
        "steps": args.steps,
        "stage1_steps": args.stage1_steps,
        "use_ehr": not args.no_ehr,
        "wall_seconds": round(time.time() - started, 1),
        "machine": f"{platform.machine()} "
        f"{torch.get_num_threads()} torch thread(s), {platform.python_version()}",
    }
    (out / "recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    print(json.dumps({"out": str(out), **recipe}))


if __name__ == "__main__":
    main()
