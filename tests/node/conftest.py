"""Fixtures for the DICOM node tests: settings on a fresh database, a running listener, sample files."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from diff3m.config import Settings, load_settings
from diff3m.node.scp import Listener, start_listener
from tests.services import free_port, require_tool


@pytest.fixture
def make_settings(tmp_path: Path, sqlite_url: str) -> Callable[..., Settings]:
    """Settings factory: storage under tmp_path, the test's SQLite DB, a free port, overrides per section."""

    def factory(**node: Any) -> Settings:
        base: dict[str, Any] = {"storage_dir": str(tmp_path / "storage"), "host": "127.0.0.1",
                                "port": free_port(), "min_free_disk_mb": 1}
        base.update(node)
        return load_settings(None, node=base, database={"url": sqlite_url})

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default node settings for one test."""
    return make_settings()


@pytest.fixture
def listener(settings: Settings) -> Iterator[Listener]:
    """A running listener with the default settings."""
    lst = start_listener(settings)
    try:
        yield lst
    finally:
        lst.stop()


def storescu_config(folder: Path) -> Path:
    """A storescu association profile 'All': every SOP class x every accepted transfer syntax, one
    presentation context each (as modalities do), so each file goes in its own syntax."""
    from diff3m.config import NodeSettings
    from diff3m.node.syntaxes import SUPPORTED_TRANSFER_SYNTAXES

    lines = ["[[TransferSyntaxes]]"]
    for i, uid in enumerate(SUPPORTED_TRANSFER_SYNTAXES):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {uid}"]
    lines += ["", "[[PresentationContexts]]", "[Ctx]"]
    n = 0
    for sop in NodeSettings().sop_classes:
        for key in (f"TS{i}" for i in range(len(SUPPORTED_TRANSFER_SYNTAXES))):
            n += 1
            lines.append(f"PresentationContext{n} = {sop}\\{key}")
    lines += ["", "[[Profiles]]", "[All]", "PresentationContexts = Ctx", ""]
    path = folder / "storescu.cfg"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def storescu(port: int, *files: Path | str, aec: str = "DIFF3M", aet: str = "STORESCU",
             extra: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run dcmtk storescu against 127.0.0.1:port, proposing every accepted syntax in its own context."""
    exe = require_tool("storescu")
    cfg = storescu_config(Path(tempfile.mkdtemp(prefix="storescu-")))
    cmd = [exe, "-aet", aet, "-aec", aec, "-xf", str(cfg), "All", *(extra or []), "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def echoscu(port: int, aec: str = "DIFF3M", aet: str = "ECHOSCU",
            extra: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run dcmtk echoscu against 127.0.0.1:port."""
    exe = require_tool("echoscu")
    return subprocess.run([exe, "-aet", aet, "-aec", aec, *(extra or []), "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)
