"""Count what a dataset loader skipped or could not parse, and say it once per reason with a count."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

log = logging.getLogger("diff3m.models.data")


@dataclass
class LoadReport:
    """Per-reason counts of malformed rows (warned) and rows left out by design (logged as info)."""

    layout: str
    malformed: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    loaded: int = 0

    def bad(self, reason: str, n: int = 1) -> None:
        """Count a malformed row (bad value, missing file, inconsistent tables)."""
        self.malformed[reason] += n

    def skip(self, reason: str, n: int = 1) -> None:
        """Count a row deliberately left out (lateral view, other split)."""
        self.skipped[reason] += n

    def emit(self) -> None:
        """Log one warning with every malformed-row count, and one info line with the skips."""
        if self.malformed:
            total = sum(self.malformed.values())
            detail = "; ".join(f"{n} {reason}" for reason, n in sorted(self.malformed.items()))
            log.warning(
                "%s dataset: %d malformed row(s) ignored or left without a value: %s",
                self.layout,
                total,
                detail,
            )
        if self.skipped:
            detail = "; ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            log.info("%s dataset: %d image(s) loaded; skipped %s", self.layout, self.loaded, detail)
