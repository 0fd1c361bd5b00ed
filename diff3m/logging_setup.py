"""Structured JSON logging for every process: one JSON object per line, UIDs only, never PHI."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else passed via ``extra=`` becomes a JSON field.
_STANDARD = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}

# Keys that must never reach a log line, whatever a caller passes in ``extra``.
PHI_KEYS = frozenset({
    "patient_name", "PatientName", "patient_birth_date", "PatientBirthDate", "birth_date",
    "patient_address", "PatientAddress", "token", "password", "authorization",
})


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, extra fields (PHI keys dropped)."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object on one line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key in _STANDARD or key.startswith("_") or key in PHI_KEYS:
                continue
            out[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str | int = "INFO", stream: Any = None) -> logging.Handler:
    """Send the root logger (and uvicorn's) to one JSON handler on stderr; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_diff3m_json", False)]:
        root.removeHandler(old)
    handler._diff3m_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "celery", "pynetdicom"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # uvicorn's access log prints raw paths with query strings (``?token=``); the web app logs
    # requests itself, by route template, so the access logger stays silent.
    logging.getLogger("uvicorn.access").disabled = True
    return handler
