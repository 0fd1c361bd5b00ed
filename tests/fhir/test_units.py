"""UCUM conversion and DICOM age/date parsing."""

from __future__ import annotations

from datetime import date

import pytest

from diff3m.fhir.ehr import age_at, age_from_as, parse_da
from diff3m.fhir.units import UnitError, convert, normalize


@pytest.mark.parametrize(("value", "src", "dst", "expected"), [
    (180, "[lb_av]", "kg", 81.6466266),
    (74600, "g", "kg", 74.6),
    (70, "[in_i]", "cm", 177.8),
    (1.62, "m", "cm", 162.0),
    (12, "kPa", "mm[Hg]", 90.0074),
    (120, "mm[Hg]", "mm[Hg]", 120.0),
    (27.4, "kg/m2", "kg/m2", 27.4),
    (98.6, "[degF]", "Cel", 37.0),
    (180, "lbs", "kg", 81.6466266),  # common spelling in Quantity.unit
    (120, "mmHg", "mm[Hg]", 120.0),
])
def test_convert(value: float, src: str, dst: str, expected: float) -> None:
    assert convert(value, src, dst) == pytest.approx(expected, abs=1e-3)


def test_convert_refuses_other_dimensions_and_unknown_units() -> None:
    with pytest.raises(UnitError, match="cannot convert"):
        convert(70, "kg", "cm")
    with pytest.raises(UnitError, match="unknown unit"):
        normalize("furlongs")


@pytest.mark.parametrize(("text", "years"), [("065Y", 65), ("006M", 0.5), ("052W", 0.9966), ("bad", None),
                                             ("", None), (None, None), ("65Y", None)])
def test_age_from_dicom_as(text: str | None, years: float | None) -> None:
    assert age_from_as(text) == (pytest.approx(years, abs=1e-3) if years is not None else None)


def test_parse_da_and_completed_years() -> None:
    assert parse_da("20240315") == date(2024, 3, 15)
    assert parse_da("2024-03-15") is None and parse_da("20241399") is None and parse_da(None) is None
    assert age_at(date(1960, 5, 20), date(2024, 3, 15)) == 63
    assert age_at(date(1960, 3, 15), date(2024, 3, 15)) == 64
