"""CLI of the benchmarks: ``diff3m bench inference|ingest|e2e|cpu-options``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

bench_app = typer.Typer(
    help="Benchmarks (results go to bench/RESULTS.md with --record).", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="print the result as JSON on the last line")]
RecordOption = Annotated[bool, typer.Option("--record", help="append the result to bench/RESULTS.md")]


def register(app: typer.Typer) -> None:
    """Add ``diff3m bench`` and its sub-commands."""
    app.add_typer(bench_app, name="bench")


def _emit(result: Any, text: str, as_json: bool, record: bool, section: str) -> None:
    if record:
        from diff3m.bench.results import record as append

        typer.echo(f"recorded in {append(section, text)}", err=True)
    typer.echo(text)
    if as_json:
        typer.echo(json.dumps(result.as_dict(), separators=(",", ":")))


@bench_app.command("inference")
def inference_command(
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="checkpoint dir or builtin:demo")
    ] = "builtin:demo",
    images: Annotated[int, typer.Option("--images", help="synthetic images scored per default round")] = 8,
    batch_size: Annotated[int, typer.Option("--batch-size", help="batch of the default inference")] = 8,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    rounds: Annotated[int, typer.Option("--rounds", help="alternating default/recipe rounds")] = 3,
    recipe_steps: Annotated[
        int, typer.Option("--recipe-steps", help="recipe steps timed each way, scaled to 399 (399 = all)")
    ] = 20,
    threads: Annotated[int, typer.Option("--threads", help="torch CPU threads (0: torch's default)")] = 0,
    auroc: Annotated[
        Path | None, typer.Option("--auroc", help="labelled dataset to compare default and recipe AUROC on")
    ] = None,
    layout: Annotated[
        str, typer.Option("--layout", help="layout of --auroc data: mimic | chexpert")
    ] = "mimic",
    auroc_images: Annotated[
        int, typer.Option("--auroc-images", help="balanced subset size for --auroc")
    ] = 24,
    split: Annotated[str | None, typer.Option("--split", help="split of --auroc data (default test)")] = None,
    as_json: JsonOption = False,
    record: RecordOption = False,
) -> None:
    """Seconds per image: default inference vs the published recipe (399 + 399 steps, L 400, batch 1)."""
    from diff3m.bench import inference
    from diff3m.models.checkpoint import CheckpointError

    try:
        res = inference.run(
            checkpoint,
            images=images,
            batch_size=batch_size,
            device=device,
            rounds=rounds,
            recipe_steps=recipe_steps,
            threads=threads or None,
            auroc_data=auroc,
            auroc_layout=layout,
            auroc_images=auroc_images,
            auroc_split=split,
        )
    except (CheckpointError, ValueError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _emit(res, inference.markdown(res), as_json, record, "Inference vs the published recipe")


@bench_app.command("cpu-options")
def cpu_options_command(
    network: Annotated[
        str, typer.Option("--network", help="profile name (tiny|demo|paper) or checkpoint")
    ] = "demo",
    batch_size: Annotated[int, typer.Option("--batch-size")] = 1,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved rounds over the variants")] = 3,
    repeats: Annotated[int, typer.Option("--repeats", help="timed passes per variant per round")] = 3,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="variant keys to compare with the baseline (repeatable)"),
    ] = None,
    as_json: JsonOption = False,
    record: RecordOption = False,
) -> None:
    """Seconds per network pass under CPU thread count, OpenMP wait policy and channels-last, vs defaults."""
    from diff3m.bench import cpu_options

    try:
        res = cpu_options.run(network, batch=batch_size, rounds=rounds, repeats=repeats, only=only)
    except (RuntimeError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _emit(res, cpu_options.markdown(res), as_json, record, "CPU options")


@bench_app.command("e2e")
def e2e_command(
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="checkpoint dir or builtin:demo")
    ] = "builtin:demo",
    single: Annotated[int, typer.Option("--single", help="studies sent one at a time (turnaround)")] = 3,
    queued: Annotated[int, typer.Option("--queued", help="studies queued at once per batch size")] = 20,
    batch_size: Annotated[
        list[int] | None, typer.Option("--batch-size", help="model batch sizes to compare (repeatable)")
    ] = None,
    rows: Annotated[int, typer.Option("--rows", help="image rows")] = 2048,
    cols: Annotated[int, typer.Option("--cols", help="image columns")] = 1792,
    device: Annotated[str, typer.Option("--device", help="cpu | cuda")] = "cpu",
    as_json: JsonOption = False,
    record: RecordOption = False,
) -> None:
    """Turnaround from study complete to SR at the PACS; studies/min with studies queued, per batch size."""
    from diff3m.bench import e2e

    try:
        res = e2e.run(
            checkpoint,
            single=single,
            queued=queued,
            batch_sizes=tuple(batch_size or (1, 4, 8)),
            rows=rows,
            cols=cols,
            device=device,
        )
    except (RuntimeError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _emit(res, e2e.markdown(res), as_json, record, "End to end")


@bench_app.command("ingest")
def ingest_command(
    images: Annotated[int, typer.Option("--images", help="DX 512x512x16 images in one study")] = 200,
    assocs: Annotated[int, typer.Option("--assocs", help="concurrent storescu associations")] = 8,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved rounds over the receivers")] = 2,
    processes: Annotated[int, typer.Option("--processes", help="listener processes of the node")] = 1,
    as_json: JsonOption = False,
    record: RecordOption = False,
) -> None:
    """Images/s of the node vs storescp --fork vs Orthanc (same images, same run) and the node's ratios."""
    from diff3m.bench import ingest

    try:
        res = ingest.run(images=images, associations=assocs, rounds=rounds, processes=processes)
    except (RuntimeError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from err
    _emit(res, ingest.markdown(res), as_json, record, "Ingest")
