"""Append a benchmark's Markdown to its own section of bench/RESULTS.md, leaving other sections alone."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent.parent / "bench" / "RESULTS.md"


def record(section: str, text: str, notes: str = "", path: Path = RESULTS) -> Path:
    """Add ``text`` at the end of ``## section`` (created with ``notes`` under it when missing)."""
    existing = path.read_text() if path.exists() else "# Benchmark results\n"
    heading = f"## {section}\n"
    if heading not in existing:
        existing = existing.rstrip("\n") + f"\n\n{heading}\n" + (notes.rstrip("\n") + "\n" if notes else "")
    head, _, tail = existing.partition(heading)
    body, sep, rest = tail.partition("\n## ")
    after = "\n" + sep.lstrip("\n") + rest if sep else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(head + heading + body.rstrip("\n") + "\n\n" + text.rstrip("\n") + "\n" + after)
    return path
