"""A clean copy of a source image's patient, study and equipment attributes: only valid values travel.

Our outputs copy patient/study information from the source image (highdicom does this from a
reference dataset). Sources from the field carry empty, malformed or out-of-range values
(a zero weight, a date of 20231341, a sex of "UNKNOWN", a name in a legacy character set);
copying them verbatim makes our objects invalid. ``clean_reference`` builds a new dataset
holding only the attributes we carry over, each validated against its VR, with text decoded
to ``str`` so that it can be re-encoded in the output's own character set.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable

from pydicom import config
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName, validate_value

# Type 2 in the Patient / General Study modules: always present in our outputs, empty when invalid.
TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
# Type 3 patient / study attributes worth carrying; dropped when invalid.
OPTIONAL = (
    "IssuerOfPatientID", "PatientAge", "PatientSize", "PatientWeight", "StudyDescription",
)
# Acquisition equipment of the source (highdicom records it as contributing equipment).
EQUIPMENT = (
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "InstitutionName", "InstitutionalDepartmentName", "StationName", "AcquisitionDate",
    "AcquisitionTime",
)
UIDS = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")

_AGE = re.compile(r"^\d{3}[DWMY]$")
_SEX = {"M", "F", "O"}


class SourceError(ValueError):
    """A source image that cannot be the basis of an output (missing or invalid UIDs, no pixels)."""


def source_uid(ds: Dataset, keyword: str) -> UID:
    """A required UID of the source, validated; raises SourceError naming the attribute."""
    value = ds.get(keyword)
    uid = UID(str(value).strip()) if value else UID("")
    if not uid or not uid.is_valid:
        raise SourceError(f"source image has no valid {keyword}")
    return uid


def _valid_date(value: str) -> bool:
    try:
        datetime.datetime.strptime(value, "%Y%m%d")
    except ValueError:
        return False
    return True


def _valid_time(value: str) -> bool:
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", value)
    if not m:
        return False
    hh, mm, ss = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    return hh < 24 and mm < 60 and ss < 61


def _valid_positive(value: object) -> bool:
    try:
        f = float(str(value))
    except ValueError:
        return False
    return math.isfinite(f) and f > 0


def _as_text(value: object) -> str | list[str]:
    """Decoded text of an element value (multi-valued elements become lists)."""
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    if isinstance(value, bytes):
        raise ValueError("undecodable bytes")
    return str(value)


def clean_value(keyword: str, value: object) -> object | None:
    """``value`` if it is valid for ``keyword`` (VR syntax plus the semantics we know), else None."""
    vr = dictionary_VR(keyword)
    if value is None or value == "":
        return None
    try:
        text = _as_text(value)
    except (ValueError, UnicodeError):
        return None
    items = text if isinstance(text, list) else [text]
    items = [t.strip() if vr != "PN" else t.rstrip() for t in items]
    if not items or any(t == "" for t in items):
        return None
    for t in items:
        if any(ord(c) < 32 for c in t):
            return None
        try:
            validate_value(vr, t if vr != "PN" else PersonName(t), config.RAISE)
        except (ValueError, TypeError, UnicodeError):
            return None
        if vr == "DA" and not _valid_date(t):
            return None
        if vr == "TM" and not _valid_time(t):
            return None
        if vr == "DS" and not _valid_positive(t):
            return None
        if vr == "AS" and not _AGE.match(t):
            return None
    if keyword == "PatientSex" and items[0] not in _SEX:
        return None
    if vr == "PN":
        name = items[0]
        return name if "^" in name or "=" in name else name + "^"
    return items if isinstance(text, list) else items[0]


def _copy(target: Dataset, source: Dataset, keywords: Iterable[str], type2: bool) -> None:
    for keyword in keywords:
        value = clean_value(keyword, source.get(keyword)) if keyword in source else None
        if value is not None:
            setattr(target, keyword, value)
        elif type2:
            setattr(target, keyword, "")


def clean_reference(source: Dataset) -> Dataset:
    """A new dataset with the source's UIDs and its valid patient, study and equipment attributes."""
    ref = Dataset()
    for keyword in UIDS:
        setattr(ref, keyword, source_uid(source, keyword))
    _copy(ref, source, TYPE2, type2=True)
    _copy(ref, source, OPTIONAL, type2=False)
    _copy(ref, source, EQUIPMENT, type2=False)
    return ref


def needs_unicode(*datasets_or_texts: Dataset | str | None) -> bool:
    """True when any text value (in the datasets or the extra strings) is not plain ASCII."""
    for item in datasets_or_texts:
        if item is None:
            continue
        if isinstance(item, str):
            if not item.isascii():
                return True
            continue
        for elem in item.iterall():
            if elem.VR in ("SQ", "OB", "OW", "UN"):
                continue
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            if any(isinstance(v, str | PersonName) and not str(v).isascii() for v in values):
                return True
    return False


def output_charset(*datasets_or_texts: Dataset | str | None) -> str | None:
    """The Specific Character Set of an output: UTF-8 when any value needs it, else the default."""
    return "ISO_IR 192" if needs_unicode(*datasets_or_texts) else None
