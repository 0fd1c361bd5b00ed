"""diff3m.models.timestep_draw: weighted timestep bands for stage 2."""

from __future__ import annotations

import pytest
import torch

from diff3m.models.timestep_draw import TimestepBand, check_draw, format_draw, parse_draw, sample_timesteps


def test_parse_and_format_round_trip() -> None:
    draw = parse_draw(" 1@100-199 , 1@49")
    assert draw == (TimestepBand(1.0, 49, 49), TimestepBand(1.0, 100, 199))  # sorted by timestep
    assert format_draw(draw) == "1@49,1@100-199"
    assert parse_draw(format_draw(draw)) == draw
    assert format_draw(parse_draw("0.25@0-9")) == "0.25@0-9"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("49", "not WEIGHT@FIRST"),
        ("x@49", "not WEIGHT@FIRST"),
        ("1@a-b", "not WEIGHT@FIRST"),
        ("0@49", "positive"),
        ("1@60-50", "first <= last"),
        ("1@-5", "not WEIGHT@FIRST"),
        ("1@0-99,1@99-120", "overlap"),
        ("", "not WEIGHT@FIRST"),
    ],
)
def test_bad_draws_are_refused_with_the_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_draw(text)


def test_a_band_may_not_reach_the_max_level() -> None:
    check_draw(parse_draw("1@199"), below=200)
    with pytest.raises(ValueError, match="reaches 200"):
        check_draw(parse_draw("1@49,1@100-200"), below=200)
    with pytest.raises(ValueError, match="at least one"):
        check_draw([])


def test_samples_follow_the_weights_and_stay_in_their_bands() -> None:
    draw = parse_draw("3@49,1@100-103")
    t = sample_timesteps(draw, 40000, torch.Generator().manual_seed(0))
    assert t.dtype == torch.int64 and t.shape == (40000,)
    assert set(t.unique().tolist()) == {49, 100, 101, 102, 103}
    assert (t == 49).float().mean().item() == pytest.approx(0.75, abs=0.01)
    upper = t[t >= 100]
    for v in range(100, 104):  # uniform within the band
        assert (upper == v).float().mean().item() == pytest.approx(0.25, abs=0.02)
    # the same generator state gives the same draws (a resumed run repeats itself)
    again = sample_timesteps(draw, 40000, torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
