"""How stage 2 draws its training timesteps when not uniformly: a weighted mixture of timestep bands.

A draw is written ``WEIGHT@FIRST[-LAST],...``, for example ``0.5@49,0.5@100-199``: half of the batch at
t = 49 (the timestep the ``noise`` encoding reads at noise level 50), half uniformly from 100 to 199.
Weights are relative (they need not sum to 1); bands are inclusive and may not overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimestepBand:
    """A share of the draws, spread uniformly over the timesteps ``first`` .. ``last`` (inclusive)."""

    weight: float
    first: int
    last: int

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"a timestep band's weight must be positive, not {self.weight}")
        if not 0 <= self.first <= self.last:
            raise ValueError(f"a timestep band needs 0 <= first <= last, not {self.first}-{self.last}")

    def __str__(self) -> str:
        span = f"{self.first}" if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.weight:g}@{span}"


TimestepDraw = tuple[TimestepBand, ...]


def parse_draw(text: str) -> TimestepDraw:
    """The draw a ``WEIGHT@FIRST[-LAST],...`` string describes; ValueError with the offending part."""
    bands = []
    for part in (p.strip() for p in text.split(",")):
        weight, sep, span = part.partition("@")
        first, _, last = span.partition("-")
        try:
            if not sep:
                raise ValueError("no '@'")
            bands.append(TimestepBand(float(weight), int(first), int(last or first)))
        except ValueError as err:
            raise ValueError(f"timestep band {part!r} is not WEIGHT@FIRST[-LAST] ({err})") from err
    return check_draw(bands)


def check_draw(bands: Sequence[TimestepBand], below: int | None = None) -> TimestepDraw:
    """``bands`` as a draw, sorted by timestep; ValueError if empty, overlapping or reaching ``below``."""
    ordered = tuple(sorted(bands, key=lambda b: b.first))
    if not ordered:
        raise ValueError("a timestep draw needs at least one band")
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.first <= a.last:
            raise ValueError(f"timestep bands {a} and {b} overlap")
    if below is not None and ordered[-1].last >= below:
        raise ValueError(f"timestep band {ordered[-1]} reaches {below}: stage 2 trains below it")
    return ordered


def format_draw(draw: Sequence[TimestepBand]) -> str:
    """The ``WEIGHT@FIRST[-LAST],...`` string of a draw (``parse_draw``'s inverse)."""
    return ",".join(str(b) for b in draw)


def sample_timesteps(draw: Sequence[TimestepBand], n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` timesteps (int64) from ``draw``: a band by weight, then a timestep uniformly within it."""
    weights = torch.tensor([b.weight for b in draw], dtype=torch.float64)
    band = torch.multinomial(weights, n, replacement=True, generator=generator)
    first = torch.tensor([b.first for b in draw])[band]
    width = torch.tensor([b.last - b.first + 1 for b in draw])[band]
    offset = (torch.rand(n, generator=generator, dtype=torch.float64) * width).long()
    return first + torch.minimum(offset, width - 1)
