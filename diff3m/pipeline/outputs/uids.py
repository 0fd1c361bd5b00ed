"""Deterministic UIDs for the objects we write, so a re-run never duplicates one at the PACS."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from pydicom.uid import UID

OutputKind = Literal["sr", "sc"]

_KIND_DIGIT: dict[OutputKind, int] = {"sr": 1, "sc": 2}

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:diff3m-node:outputs:v1")
_SEP = "\x1f"  # cannot occur in a UID or version string, so parts never run together


@dataclass(frozen=True)
class OutputUids:
    """The Series and SOP Instance UIDs of one output object."""

    series_uid: UID
    sop_instance_uid: UID


def derived_uid(*parts: str) -> UID:
    """A 2.25 UID from a name-based (SHA-1, version 5) UUID of ``parts``: same parts, same UID."""
    if not parts or any(not isinstance(p, str) for p in parts):
        raise ValueError("derived_uid needs one or more string parts")
    # pydicom's generate_uid(prefix=None) ignores its entropy sources (random UUID4), so not that.
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, _SEP.join(parts)).int}")


def series_uid(kind: OutputKind, study_uid: str, model_name: str, model_version: str, revision: int) -> UID:
    """The output series of ``kind`` for one study revision and model (SR and SC differ)."""
    return derived_uid("series", kind, study_uid, model_name, model_version, str(int(revision)))


def series_number(kind: OutputKind, revision: int) -> int:
    """Series Number of an output series: 9000 + 10 x revision + 1 (SR) or 2 (SC); newer = higher."""
    return 9000 + 10 * max(0, int(revision)) + _KIND_DIGIT[kind]


def output_uids(
    kind: OutputKind,
    study_uid: str,
    source_uids: Iterable[str],
    model_name: str,
    model_version: str,
    revision: int,
) -> OutputUids:
    """UIDs of one output object built from ``source_uids`` (order does not matter)."""
    sources = sorted(set(source_uids))
    if not sources:
        raise ValueError("an output needs at least one source SOP Instance UID")
    rev = str(int(revision))
    sop = derived_uid("instance", kind, study_uid, model_name, model_version, rev, *sources)
    return OutputUids(series_uid(kind, study_uid, model_name, model_version, revision), sop)


def device_uid(model_name: str, model_version: str) -> UID:
    """The Device Observer UID of the algorithm (one per model name and version)."""
    return derived_uid("device", model_name, model_version)


@dataclass(frozen=True)
class OutputRef:
    """Where an output object we sent earlier lives (e.g. the SR a re-evaluation supersedes)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
