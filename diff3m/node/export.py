"""Export to ``[[destinations]]``: the outbox sender for ``DeliveryKind.DICOM`` entries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from diff3m.config import Settings
from diff3m.db.models import Delivery, Instance, OutputObject
from diff3m.db.session import session_scope
from diff3m.node import storage
from diff3m.node.scu import SendReport, UnsendableFile, send_files


def payload_paths(settings: Settings, payload: dict[str, Any]) -> list[Path]:
    """Absolute paths of what a DICOM delivery sends.

    ``payload`` keys (any combination): ``files`` (paths relative to storage_dir),
    ``instance_ids`` (Instance rows), ``output_ids`` (OutputObject rows).
    """
    root = Path(settings.node.storage_dir)
    rel: list[str] = [str(p) for p in payload.get("files", [])]
    instance_ids = [int(i) for i in payload.get("instance_ids", [])]
    output_ids = [int(i) for i in payload.get("output_ids", [])]
    if instance_ids or output_ids:
        with session_scope(settings.database.url) as session:
            if instance_ids:
                rel += session.scalars(select(Instance.path).where(Instance.id.in_(instance_ids))).all()
            if output_ids:
                rel += session.scalars(select(OutputObject.path).where(OutputObject.id.in_(output_ids))).all()
        if len(rel) < len(payload.get("files", [])) + len(instance_ids) + len(output_ids):
            raise UnsendableFile("some instance/output ids of the delivery do not exist")
    try:
        paths = [storage.resolve(root, r) for r in rel]
    except ValueError as err:
        raise UnsendableFile(str(err)) from None
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise UnsendableFile(f"{len(missing)} file(s) missing from storage, e.g. {missing[0]}")
    return paths


def deliver_dicom(settings: Settings, payload: dict[str, Any], destination: str | None = None) -> SendReport:
    """C-STORE a delivery's files to its destination over one association; raises DeliveryError."""
    name = destination or payload.get("destination")
    if not name:
        raise UnsendableFile("delivery names no destination")
    try:
        dest = settings.destination(str(name))
    except KeyError:
        raise UnsendableFile(f"unknown destination {name!r}") from None
    ssl_context = None
    if dest.tls:
        from diff3m.node.tls import client_context

        node = settings.node
        ssl_context = client_context(node.tls_ca, node.tls_cert, node.tls_key)
    return send_files(payload_paths(settings, payload), dest.host, dest.port, dest.ae_title,
                      calling_aet=settings.node.ae_title, ssl_context=ssl_context,
                      timeout=settings.node.network_timeout, max_pdu=settings.node.max_pdu)


def send_delivery(settings: Settings, delivery: Delivery) -> None:
    """Outbox sender signature for ``outbox.process_due``."""
    deliver_dicom(settings, delivery.payload, delivery.destination)
