"""Model profiles: the published Diff3M sizes and sampling recipe, and smaller serving/test sizes, as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class Profile:
    """One network size plus its diffusion schedule, sampling recipe and training defaults."""

    name: str
    image_size: int  # square model grid (pixels)
    base_channels: int  # UNet width at full resolution
    channel_mult: tuple[int, ...]  # width multiplier per resolution level
    num_res_blocks: int  # residual blocks per level
    attention_resolutions: tuple[int, ...]  # feature-map sizes (pixels) that get self-attention
    num_heads: int = 1
    norm_groups: int = 32  # GroupNorm groups
    dropout: float = 0.0
    # diffusion schedule
    timesteps: int = 1000  # T
    beta_start: float = 1e-4
    beta_end: float = 0.02
    # sampling recipe: the image is taken to noise_level, then DDIM-denoised back
    noise_level: int = 400  # L
    steps: int = 399  # DDIM steps (each direction for inversion)
    encoding: str = "inversion"  # inversion (published) | noise (forward q-sample; diffusion.ENCODINGS)
    draws: int = 1  # noise draws averaged per image (noise encoding)
    score_name: str = "mse"  # image score (checkpoint.SCORE_NAMES)
    # training defaults
    batch_size: int = 24
    lr: float = 1e-4
    weight_decay: float = 0.0
    ema_decay: float = 0.9999

    @property
    def token_width(self) -> int:
        """Width of timestep embedding and EHR tokens (4 x base, 512 in the paper)."""
        return 4 * self.base_channels

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for config.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        """Rebuild a profile from config.json; unknown or missing keys raise ValueError."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown profile keys: {sorted(unknown)}")
        values = dict(data)
        for key in ("channel_mult", "attention_resolutions"):
            if key in values:
                values[key] = tuple(values[key])
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(f"incomplete profile: {err}") from err


PAPER = Profile(
    name="paper",
    image_size=256,
    base_channels=128,
    channel_mult=(1, 1, 2, 2, 4, 4),
    num_res_blocks=2,
    attention_resolutions=(16,),
    noise_level=400,
    steps=399,
    batch_size=24,
    ema_decay=0.9999,
)

DEMO = Profile(
    name="demo",
    image_size=64,
    base_channels=32,
    channel_mult=(1, 2, 2, 4),
    num_res_blocks=2,
    attention_resolutions=(8,),
    norm_groups=16,
    noise_level=300,
    steps=10,
    batch_size=16,
    lr=2e-4,
    ema_decay=0.999,
)

TINY = Profile(
    name="tiny",
    image_size=32,
    base_channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_resolutions=(),  # the middle block still has self-attention
    norm_groups=4,
    noise_level=100,
    steps=4,
    batch_size=2,
    lr=1e-3,
    ema_decay=0.9,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (PAPER, DEMO, TINY)}
DEFAULT_PROFILE = "demo"


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (paper, demo, tiny)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
