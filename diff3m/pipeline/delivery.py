"""Stage 4: run due outbox entries (DICOM export, FHIR Observation, FHIR triage), settle studies."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from sqlalchemy import select

from diff3m.config import Settings
from diff3m.db.models import (
    Delivery,
    DeliveryKind,
    InferenceResult,
    Instance,
    OutputObject,
    Study,
)
from diff3m.db.session import session_scope
from diff3m.node import storage
from diff3m.node.outbox import Sender
from diff3m.pipeline import state
from diff3m.pipeline.sources import instance_bytes

log = logging.getLogger(__name__)


def materialize(settings: Settings, delivery: Delivery) -> None:
    """Make sure every file a DICOM delivery names exists in this worker's storage root."""
    root = Path(settings.node.storage_dir)
    with session_scope(settings.database.url) as s:
        for iid in delivery.payload.get("instance_ids", []):
            inst = s.get(Instance, int(iid))
            if inst is not None and not storage.resolve(root, inst.path).is_file():
                instance_bytes(settings, inst.study, inst)  # fetched through WADO-RS and cached
        for oid in delivery.payload.get("output_ids", []):
            obj = s.get(OutputObject, int(oid))
            if obj is not None and obj.path and not storage.resolve(root, obj.path).is_file():
                storage.write_durable(root, obj.path, obj.data or b"")


def send_dicom(settings: Settings, delivery: Delivery) -> None:
    """Outbox sender for DICOM: materialize the files, then C-STORE them over one association."""
    from diff3m.node.export import send_delivery

    materialize(settings, delivery)
    send_delivery(settings, delivery)


def send_observation(settings: Settings, delivery: Delivery) -> None:
    """Outbox sender for the FHIR Observation carrying the study's result."""
    from diff3m.fhir.writes import ObservationInput, write_observation

    with session_scope(settings.database.url) as s:
        study = s.get(Study, delivery.study_id)
        sr = s.get(OutputObject, int(delivery.payload["sr_output"]))
        assert study is not None and sr is not None
        res = s.scalar(select(InferenceResult).where(InferenceResult.study_id == study.id,
                                                     InferenceResult.revision == sr.revision))
        assert res is not None
        inp = ObservationInput(
            study_uid=study.study_uid, sr_sop_instance_uid=sr.sop_instance_uid, score=res.score,
            abnormal=res.abnormal, threshold=res.threshold, model_name=res.model_name,
            model_version=res.model_version, patient_id=study.patient_id,
            issuer=study.issuer_of_patient_id,
        )
    resource_id = write_observation(settings, inp)
    with session_scope(settings.database.url) as s:
        state.audit(s, "fhir_observation_written", delivery.study_id, resource=resource_id)


def send_triage(settings: Settings, delivery: Delivery) -> None:
    """Outbox sender that raises the worklist ServiceRequest's priority (never lowers it)."""
    from diff3m.fhir.triage import raise_priority

    with session_scope(settings.database.url) as s:
        study = s.get(Study, delivery.study_id)
        assert study is not None
        accession = study.accession_number
    if not accession:
        return
    outcome = raise_priority(settings, accession, str(delivery.payload["priority"]))
    with session_scope(settings.database.url) as s:
        state.audit(s, "fhir_triage", delivery.study_id, changed=outcome.changed, reason=outcome.reason,
                    resource=outcome.resource_id, old=outcome.old_priority, new=outcome.new_priority)


SENDERS: dict[DeliveryKind, Sender] = {
    DeliveryKind.DICOM: send_dicom,
    DeliveryKind.FHIR_OBSERVATION: send_observation,
    DeliveryKind.FHIR_TRIAGE: send_triage,
}


def deliver_due(settings: Settings, limit: int = 20) -> int:
    """Send every due outbox entry (up to ``limit``) and settle the studies they belong to."""
    from diff3m.node.outbox import process_due

    outcomes = process_due(settings, SENDERS, limit=limit)
    if outcomes:
        with session_scope(settings.database.url) as s:
            study_ids = set(s.scalars(select(Delivery.study_id).where(
                Delivery.id.in_([i for i, _ in outcomes]))).all())
            for sid in study_ids:
                study = s.get(Study, sid) if sid is not None else None
                if study is not None:
                    state.settle_deliveries(s, study)
    return len(outcomes)


def deliver_one(settings: Settings, delivery_id: int) -> None:
    """Task entry: the named entry is due, so run the due entries (it among them)."""
    deliver_due(settings)


class DeliveryLoop:
    """Sends due outbox entries from a thread of its own, so results never wait behind inference.

    ``serve`` runs one: its Celery pool is shared by every stage, and a delivery task queued behind
    a batch of inferences would hold a finished SR back from the PACS for the whole burst. Claims
    in the outbox make this loop and the deliver tasks safe to run side by side.
    """

    def __init__(self, settings: Settings, interval: float = 0.5) -> None:
        self.settings = settings
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_forever(self) -> None:
        """Deliver what is due every ``interval`` seconds until stopped; errors are logged."""
        while not self._stop.wait(self.interval):
            try:
                while deliver_due(self.settings) and not self._stop.is_set():
                    pass
            except Exception:
                log.exception("delivery pass failed; retrying")

    def start(self) -> threading.Thread:
        """Run the loop in a daemon thread."""
        self._thread = threading.Thread(target=self.run_forever, name="diff3m-delivery", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        """End the loop after the current pass."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
