"""CLI: ``diff3m phantoms`` (synthetic dataset) and ``diff3m evaluate`` (a checkpoint's metrics and plots)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise typer.BadParameter("give three comma-separated numbers, e.g. 0.7,0.1,0.2") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise typer.BadParameter("give three non-negative numbers (train,validate,test), not all zero")
    return parts  # type: ignore[return-value]


def phantoms_command(
    out: Annotated[Path, typer.Option("--out", help="folder to write (MIMIC-CXR-JPG + MIMIC-IV layout)")],
    normal: Annotated[int, typer.Option("--normal", min=0, help="number of normal studies")] = 100,
    abnormal: Annotated[int, typer.Option("--abnormal", min=0, help="number of abnormal studies")] = 100,
    size: Annotated[int, typer.Option("--size", min=16, max=1024, help="image size in pixels")] = 128,
    seed: Annotated[int, typer.Option("--seed", help="same seed, same dataset")] = 0,
    split: Annotated[
        str,
        typer.Option(
            "--split", help="train,validate,test fractions of the normals (abnormals go to validate/test)"
        ),
    ] = "0.7,0.1,0.2",
    design: Annotated[
        str,
        typer.Option(
            "--design", help="standard | hidden-heart: how much of the normal heart size only the EHR shows"
        ),
    ] = "standard",
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Write synthetic chest radiographs with EHR (projected from a real chest CT) in the MIMIC layout."""
    from diff3m.models.data.phantoms import generate_dataset
    from diff3m.models.data.phantoms.cases import DESIGNS

    if design not in DESIGNS:
        raise typer.BadParameter(f"choose one of {', '.join(sorted(DESIGNS))}", param_hint="--design")
    if normal + abnormal == 0:
        print("diff3m phantoms: nothing to do (--normal and --abnormal are both 0)", file=sys.stderr)
        raise typer.Exit(2)
    result = generate_dataset(
        out,
        normal,
        abnormal,
        size=size,
        seed=seed,
        fractions=_fractions(split),
        progress=not quiet,
        design=design,
    )
    counts = {
        sp: {"normal": result.count(sp, True), "abnormal": result.count(sp, False)}
        for sp in ("train", "validate", "test")
    }
    typer.echo(json.dumps({"out": str(out), "size": size, "seed": seed, "design": design, "splits": counts}))


def evaluate_command(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="checkpoint directory or builtin:NAME")],
    data: Annotated[Path, typer.Option("--data", help="dataset folder")],
    out: Annotated[Path, typer.Option("--out", help="JSON report to write; plots go beside it")],
    layout: Annotated[str, typer.Option("--layout", help="mimic | chexpert")] = "mimic",
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="train | validate | test (default: test if the dataset has one, else all)"
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="DDIM steps (default: checkpoint's)")
    ] = None,
    noise_level: Annotated[int | None, typer.Option("--noise-level", min=2, help="noise level L")] = None,
    encoding: Annotated[
        str | None, typer.Option("--encoding", help="inversion (published) | noise (default: checkpoint's)")
    ] = None,
    draws: Annotated[
        int | None, typer.Option("--draws", min=1, help="noise draws averaged (noise encoding)")
    ] = None,
    no_ehr: Annotated[bool, typer.Option("--no-ehr", help="score image-only (ablation)")] = False,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="at most this many images")] = None,
    no_plots: Annotated[
        bool, typer.Option("--no-plots", help="JSON report only: no ROC/PR plots, no montage")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="no progress bar")] = False,
) -> None:
    """Score a labelled dataset: AUROC, AP, best F1, sensitivity at 95% specificity, plots, montage."""
    from diff3m.models.checkpoint import CheckpointError
    from diff3m.models.evaluate import EvaluationError, evaluate

    try:
        report = evaluate(
            checkpoint,
            data,
            layout,
            out,
            split=split,
            steps=steps,
            noise_level=noise_level,
            encoding=encoding,
            draws=draws,
            use_ehr=not no_ehr,
            device=device,
            batch_size=batch_size,
            limit=limit,
            plots=not no_plots,
            progress=not quiet,
        )
    except (CheckpointError, EvaluationError, FileNotFoundError, ValueError) as err:
        print(f"diff3m evaluate: {err}", file=sys.stderr)
        raise typer.Exit(2) from None
    summary = {k: report[k] for k in ("auroc", "ap", "f1", "n_normal", "n_abnormal", "seconds_per_image")}
    typer.echo(json.dumps({**summary, "report": str(out)}))


def register(app: typer.Typer) -> None:
    """Add ``phantoms`` and ``evaluate`` to the diff3m command."""
    app.command("phantoms")(phantoms_command)
    app.command("evaluate")(evaluate_command)
