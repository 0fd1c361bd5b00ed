"""Dependency-audit policy for CI: run pip-audit, report every finding, fail only on known
vulnerabilities in our direct dependencies (pyproject.toml [project] dependencies).

Usage: python -m tests.reliability.audit_policy   (needs network access to PyPI / OSV)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Finding:
    """One vulnerable installed package."""

    name: str
    version: str
    ids: tuple[str, ...]
    fixes: tuple[str, ...]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies(pyproject: Path) -> set[str]:
    """Normalised names of the runtime dependencies declared in pyproject.toml."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return {_norm(re.split(r"[\s\[<>=!~;]", d, maxsplit=1)[0]) for d in deps}


def failing_findings(report: dict[str, Any], pyproject: Path) -> tuple[list[Finding], list[Finding]]:
    """(findings that fail the build, every finding) from pip-audit's JSON report."""
    direct = direct_dependencies(pyproject)
    found = [Finding(d["name"], d.get("version", ""), tuple(v["id"] for v in d["vulns"]),
                     tuple(f for v in d["vulns"] for f in v.get("fix_versions", [])))
             for d in report.get("dependencies", []) if d.get("vulns")]
    return [f for f in found if _norm(f.name) in direct], found


def main() -> int:
    """Run pip-audit on this environment; print the findings; exit 1 on a direct-dependency finding."""
    proc = subprocess.run([sys.executable, "-m", "pip_audit", "--format", "json", "--progress-spinner", "off",
                           "--skip-editable"], capture_output=True, text=True)
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        print(f"pip-audit produced no report (exit {proc.returncode}):\n{proc.stderr[-2000:]}",
              file=sys.stderr)
        return 2
    failing, found = failing_findings(report, ROOT / "pyproject.toml")
    for f in found:
        tag = "DIRECT" if f in failing else "transitive"
        print(f"{tag:10} {f.name} {f.version}: {', '.join(f.ids)} (fixed in {', '.join(f.fixes) or '-'})")
    print(f"pip-audit: {len(found)} vulnerable package(s), {len(failing)} among direct dependencies")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
