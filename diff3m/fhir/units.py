"""UCUM unit conversion for the EHR quantities the model uses (mass, length, pressure, BMI, ...)."""

from __future__ import annotations

from dataclasses import dataclass


class UnitError(ValueError):
    """A quantity's unit is unknown or cannot be converted to the wanted unit."""


@dataclass(frozen=True)
class _Unit:
    dimension: str
    factor: float  # value * factor + offset = value in the dimension's base unit
    offset: float = 0.0


# UCUM codes (case-sensitive) -> dimension and scale to a base unit per dimension.
UCUM: dict[str, _Unit] = {
    # mass (base kg)
    "kg": _Unit("mass", 1.0),
    "g": _Unit("mass", 1e-3),
    "[lb_av]": _Unit("mass", 0.45359237),
    "[oz_av]": _Unit("mass", 0.028349523125),
    # length (base m)
    "m": _Unit("length", 1.0),
    "cm": _Unit("length", 1e-2),
    "mm": _Unit("length", 1e-3),
    "[in_i]": _Unit("length", 0.0254),
    "[ft_i]": _Unit("length", 0.3048),
    # pressure (base Pa)
    "Pa": _Unit("pressure", 1.0),
    "kPa": _Unit("pressure", 1e3),
    "mm[Hg]": _Unit("pressure", 133.322387415),
    "cm[H2O]": _Unit("pressure", 98.0665),
    # body mass index (base kg/m2)
    "kg/m2": _Unit("bmi", 1.0),
    "kg/m^2": _Unit("bmi", 1.0),
    # temperature (base Cel)
    "Cel": _Unit("temperature", 1.0),
    "[degF]": _Unit("temperature", 5.0 / 9.0, -32.0 * 5.0 / 9.0),
    "K": _Unit("temperature", 1.0, -273.15),
    # time (base a = year) for ages
    "a": _Unit("time", 1.0),
    "mo": _Unit("time", 1.0 / 12.0),
    "wk": _Unit("time", 7.0 / 365.25),
    "d": _Unit("time", 1.0 / 365.25),
    # rates and fractions
    "/min": _Unit("rate", 1.0),
    "{beats}/min": _Unit("rate", 1.0),
    "{breaths}/min": _Unit("rate", 1.0),
    "%": _Unit("fraction", 1.0),
    "1": _Unit("fraction", 100.0),
}

# Common non-UCUM spellings seen in Quantity.unit (display) when Quantity.code is missing.
ALIASES: dict[str, str] = {
    "kilogram": "kg", "kgs": "kg", "lb": "[lb_av]", "lbs": "[lb_av]", "pound": "[lb_av]",
    "pounds": "[lb_av]", "oz": "[oz_av]", "in": "[in_i]", "inch": "[in_i]", "inches": "[in_i]",
    "ft": "[ft_i]", "mmhg": "mm[Hg]", "mm hg": "mm[Hg]", "kpa": "kPa", "kg/m²": "kg/m2",
    "degc": "Cel", "°c": "Cel", "c": "Cel", "degf": "[degF]", "°f": "[degF]", "f": "[degF]",
    "bpm": "/min", "beats/min": "/min", "breaths/min": "/min", "years": "a", "yr": "a",
}


def normalize(unit: str) -> str:
    """The UCUM code for ``unit`` (a UCUM code or a common spelling); UnitError when unknown."""
    u = (unit or "").strip()
    if u in UCUM:
        return u
    alias = ALIASES.get(u.lower())
    if alias:
        return alias
    raise UnitError(f"unknown unit {unit!r}")


def convert(value: float, from_unit: str, to_unit: str) -> float:
    """``value`` in ``from_unit`` expressed in ``to_unit`` (both UCUM or common spellings)."""
    src, dst = UCUM[normalize(from_unit)], UCUM[normalize(to_unit)]
    if src.dimension != dst.dimension:
        raise UnitError(f"cannot convert {from_unit!r} ({src.dimension}) to {to_unit!r} ({dst.dimension})")
    base = float(value) * src.factor + src.offset
    return (base - dst.offset) / dst.factor
