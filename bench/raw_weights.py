"""A checkpoint with a run's raw (not EMA-averaged) weights, to see what the weight averaging does.

A training run ships its EMA weights. Its resumable state (``train --keep-state``) also holds the raw
weights of the last step. This writes a copy of the run's checkpoint whose weights are those raw ones; the
copy's training.json says so. Calibrate and evaluate the copy as any checkpoint.

Usage:

    python bench/raw_weights.py RUN_DIR OUT_DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diff3m.models import checkpoint
from diff3m.models.train import STATE_FILE


def export_raw(run_dir: Path, out_dir: Path) -> Path:
    """Write ``out_dir``: the checkpoint in ``run_dir`` with the raw weights of its training state."""
    state_path = run_dir / STATE_FILE
    if not state_path.is_file():
        raise SystemExit(f"no {STATE_FILE} in {run_dir}: train it with --keep-state")
    loaded = checkpoint.load(run_dir)
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    loaded.network.load_state_dict(state["net"])
    training = {**loaded.training, "weights": f"raw weights of step {state['step']} (not the EMA)"}
    return checkpoint.save(out_dir, loaded.network, loaded.config, training)


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    print(export_raw(args.run_dir, args.out_dir))


if __name__ == "__main__":
    main()
