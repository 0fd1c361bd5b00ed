"""DIMSE handlers of the listener: one small function per service, each returning a status."""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from diff3m.config import Settings
from diff3m.node.ingest import OUT_OF_RESOURCES, ingest_bytes

log = logging.getLogger(__name__)


def handle_echo(event: Event) -> int:
    """C-ECHO: always Success."""
    return 0x0000


def handle_store(event: Event, settings: Settings, db_url: str) -> int | Dataset:
    """C-STORE: write the dataset as received (never decoded), answer only once it is durable."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        data = event.encoded_dataset(include_meta=True)
        outcome = ingest_bytes(settings, db_url, data, calling_aet=calling, check_sop_class=False)
    except Exception as err:  # never let a bug crash the association: answer a failure
        log.exception("C-STORE from %s failed: %s", calling, type(err).__name__)
        return _status(OUT_OF_RESOURCES, "internal error while storing")
    if outcome.ok:
        return 0x0000
    return _status(outcome.status, outcome.error or "refused")


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def store_handler_args(settings: Settings, db_url: str) -> list[Any]:
    """The extra arguments bound to ``handle_store``."""
    return [settings, db_url]
