"""CLI commands of the model area: ``diff3m train`` and ``diff3m score``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from diff3m.records import FieldValue


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``score`` to the ``diff3m`` command."""
    app.command("train")(train_command)
    app.command("calibrate")(calibrate_command)
    app.command("score")(score_command)


def train_command(
    data: Annotated[Path, typer.Option("--data", help="dataset root directory")],
    out: Annotated[Path, typer.Option("--out", help="checkpoint directory to write")],
    layout: Annotated[str, typer.Option("--layout", help="mimic | chexpert")] = "mimic",
    profile: Annotated[str, typer.Option("--profile", help="tiny | demo | paper")] = "demo",
    steps: Annotated[int, typer.Option("--steps", help="optimizer steps, both stages")] = 1000,
    stage1_steps: Annotated[
        int | None, typer.Option("--stage1-steps", help="image-only DDPM steps (default: half of --steps)")
    ] = None,
    no_ehr: Annotated[
        bool, typer.Option("--no-ehr", help="image-only ablation (no EHR conditioning)")
    ] = False,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    stage2_ema_restart: Annotated[
        bool | None,
        typer.Option(
            "--stage2-ema-restart/--no-stage2-ema-restart",
            help="start the EMA warm-up again when stage 2 begins, so the averaged weights drop stage 1 "
            "(default: on for a new run or arm, a resumed run keeps its own setting)",
        ),
    ] = None,
    ehr_lr_scale: Annotated[
        float | None,
        typer.Option(
            "--ehr-lr-scale",
            help="stage 2: the learning rate of the EHR tokens as a multiple of the profile's "
            "(default: 1, as published; a resumed run keeps its own)",
        ),
    ] = None,
    stage2_max_noise_level: Annotated[
        int | None,
        typer.Option(
            "--stage2-max-noise-level",
            min=2,
            help="stage 2 trains at timesteps below this, where the scorer works (its noise level must "
            "not exceed it; default: the whole schedule, as published; a resumed run keeps its own)",
        ),
    ] = None,
    stage2_masked_branch: Annotated[
        bool | None,
        typer.Option(
            "--stage2-masked-branch/--no-stage2-masked-branch",
            help="stage 2 trains the masked branch with the published loss; --no-... trains the noise "
            "loss alone, about 3x faster per step, for a profile that scores with the noise encoding "
            "(default: on, as published; a resumed run keeps its own setting)",
        ),
    ] = None,
    stage2_draw: Annotated[
        str | None,
        typer.Option(
            "--stage2-draw",
            help="stage 2 draws its timesteps from weighted bands, WEIGHT@FIRST[-LAST],... (e.g. "
            "0.5@49,0.5@100-199: half at the timestep L 50 reads, half from 100 to 199; default: uniform "
            "below the max level, as published; a resumed run keeps its own)",
        ),
    ] = None,
    stage1_from: Annotated[
        Path | None,
        typer.Option(
            "--stage1-from", help="start from another run's finished stage 1 (ablation arms share it)"
        ),
    ] = None,
) -> None:
    """Train Diff3M on the normal studies of a dataset and write a checkpoint directory."""
    from diff3m.models.data import load_dataset  # type: ignore[attr-defined]
    from diff3m.models.profiles import get_profile
    from diff3m.models.train import train

    try:
        get_profile(profile)
        samples = load_dataset(data, layout)
        path = train(
            samples,
            out,
            profile=profile,
            steps=steps,
            use_ehr=not no_ehr,
            seed=seed,
            stage1_steps=stage1_steps,
            batch_size=batch_size,
            device=device,
            stage1_from=stage1_from,
            stage2_ema_restart=stage2_ema_restart,
            ehr_lr_scale=ehr_lr_scale,
            stage2_max_noise_level=stage2_max_noise_level,
            stage2_masked_branch=stage2_masked_branch,
            stage2_draw=stage2_draw,
        )
    except (ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(
        json.dumps({"checkpoint": str(path), **json.loads((path / "config.json").read_text())["extra"]})
    )


def calibrate_command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="checkpoint directory (changed in place)")],
    data: Annotated[Path, typer.Option("--data", help="dataset root: training normals, validation normals")],
    layout: Annotated[str, typer.Option("--layout", help="mimic | chexpert")] = "mimic",
    encoding: Annotated[str | None, typer.Option("--encoding", help="inversion | noise")] = None,
    noise_level: Annotated[int | None, typer.Option("--noise-level", min=2)] = None,
    steps: Annotated[int | None, typer.Option("--steps", min=1)] = None,
    draws: Annotated[int | None, typer.Option("--draws", min=1)] = None,
    ehr_guidance: Annotated[
        float | None,
        typer.Option("--ehr-guidance", min=0.0, help="EHR guidance scale (1: the plain conditional model)"),
    ] = None,
    score: Annotated[str | None, typer.Option("--score", help="mse | max_abs | smoothed_max | ...")] = None,
    stats_images: Annotated[int, typer.Option("--stats-images", min=0, help="training normals")] = 200,
    threshold_images: Annotated[
        int, typer.Option("--threshold-images", min=1, help="validation normals")
    ] = 100,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
) -> None:
    """Refit a checkpoint's residual statistics and threshold on a dataset, optionally with a new recipe."""
    from diff3m.models.calibrate import calibrate
    from diff3m.models.checkpoint import CheckpointError
    from diff3m.models.data import load_dataset
    from diff3m.models.train import training_samples

    given = {
        "encoding": encoding,
        "noise_level": noise_level,
        "steps": steps,
        "draws": draws,
        "ehr_guidance": ehr_guidance,
        "score_name": score,
    }
    try:
        samples = load_dataset(data, layout)
        report = calibrate(
            checkpoint,
            samples,
            training_samples(samples),
            device,
            {k: v for k, v in given.items() if v is not None},
            stats_images,
            threshold_images,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    typer.echo(json.dumps(report))


def score_command(
    file: Annotated[Path, typer.Argument(help="a DICOM file (or JPG/PNG)")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="checkpoint directory or builtin:demo")] = (
        "builtin:demo"
    ),
    ehr: Annotated[
        Path | None, typer.Option("--ehr", help="JSON object of field values (canonical units)")
    ] = None,
    steps: Annotated[int | None, typer.Option("--steps")] = None,
    noise_level: Annotated[int | None, typer.Option("--noise-level")] = None,
    encoding: Annotated[
        str | None,
        typer.Option("--encoding", help="inversion (published) | noise (default: the checkpoint's)"),
    ] = None,
    draws: Annotated[
        int | None, typer.Option("--draws", help="noise draws averaged (noise encoding)")
    ] = None,
    ehr_guidance: Annotated[
        float | None,
        typer.Option("--ehr-guidance", min=0.0, help="EHR guidance scale (default: the checkpoint's)"),
    ] = None,
    no_ehr: Annotated[bool, typer.Option("--no-ehr")] = False,
    threshold: Annotated[float | None, typer.Option("--threshold")] = None,
    device: Annotated[str, typer.Option("--device")] = "auto",
) -> None:
    """Score one image and print JSON (score, label, threshold, scores, roi, map summary, timings)."""
    from diff3m.models.checkpoint import CheckpointError
    from diff3m.models.inference import Diff3MScorer
    from diff3m.models.preprocess import PreprocessError

    try:
        t0 = time.perf_counter()
        scorer = Diff3MScorer.load(checkpoint, device=device)
        t1 = time.perf_counter()
        prepared, values = _read_input(file, ehr)
        t2 = time.perf_counter()
        result = scorer.score_batch(
            [(prepared, values)],
            steps=steps,
            noise_level=noise_level,
            use_ehr=not no_ehr,
            threshold=threshold,
            encoding=encoding,
            draws=draws,
            ehr_guidance=ehr_guidance,
        )[0]
        t3 = time.perf_counter()
    except (CheckpointError, PreprocessError, ValueError, OSError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    amap = result.anomaly_map
    report: dict[str, Any] = {
        "file": str(file),
        "score": result.score,
        "label": "abnormal" if result.abnormal else "normal",
        "abnormal": result.abnormal,
        "threshold": result.threshold,
        "scores": result.scores,
        "roi": result.roi.as_dict() if result.roi else None,
        "map": {
            "rows": int(amap.shape[0]),
            "columns": int(amap.shape[1]),
            "max": float(amap.max()),
            "mean": float(amap.mean()),
        },
        "ehr_used": result.ehr_used,
        "ehr": values,
        "model": {"name": result.model_name, "version": result.model_version},
        "params": result.params,
        "timings": {
            "load_s": round(t1 - t0, 3),
            "preprocess_s": round(t2 - t1, 3),
            "inference_s": round(t3 - t2, 3),
        },
    }
    typer.echo(json.dumps(report, indent=2))


def _read_input(file: Path, ehr: Path | None) -> tuple[Any, dict[str, FieldValue]]:
    """The prepared image plus EHR values: DICOM header fields, overridden by the --ehr JSON."""
    import pydicom

    from diff3m.models.ehr import values_from_dicom
    from diff3m.models.preprocess import PreprocessError, load_image, prepare_dicom

    values: dict[str, FieldValue] = {}
    if file.suffix.lower() in {".png", ".jpg", ".jpeg"}:
        prepared = load_image(file)
    else:
        try:
            ds = pydicom.dcmread(file)
        except Exception as err:
            raise PreprocessError(f"cannot read DICOM {file.name}: {err}") from err
        prepared = prepare_dicom(ds)
        values = {k: v for k, v in values_from_dicom(ds).items() if v is not None}
    if ehr is not None:
        data = json.loads(ehr.read_text())
        if isinstance(data, dict) and isinstance(data.get("values"), dict):
            data = data["values"]
        if not isinstance(data, dict):
            raise ValueError("--ehr must hold a JSON object of field values")
        values.update(data)
    return prepared, values
