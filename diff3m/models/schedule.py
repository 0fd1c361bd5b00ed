"""The diffusion noise schedule (linear betas) and the DDIM update formulas, independent of the network."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

X0_CLIP = (-1.0, 1.0)  # the published code clips x0 estimates to [-1, 1]


@dataclass(frozen=True)
class ScheduleConfig:
    """A linear beta schedule over ``timesteps`` steps."""

    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for config.json."""
        return asdict(self)


class DiffusionSchedule:
    """Cumulative alphas of a linear schedule and the q-sample / x0 / DDIM-step formulas."""

    def __init__(self, config: ScheduleConfig, device: torch.device | str = "cpu") -> None:
        self.config = config
        betas = np.linspace(config.beta_start, config.beta_end, config.timesteps, dtype=np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        self.alphas_cumprod = torch.tensor(alphas_cumprod, dtype=torch.float32, device=device)

    @property
    def timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.config.timesteps

    def alpha_bar(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """alpha_bar_t for a batch of timesteps, shaped to broadcast over an ``ndim`` tensor."""
        a = self.alphas_cumprod.to(t.device)[t.long()]
        return a.view(-1, *([1] * (ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab) x0 + sqrt(1 - ab) noise."""
        ab = self.alpha_bar(t, x0.ndim)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 estimate from x_t (or whatever stands in for it) and the predicted noise."""
        ab = self.alpha_bar(t, x_t.ndim)
        return (x_t - (1.0 - ab).sqrt() * eps) / ab.sqrt()

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The noise that takes ``x0`` to ``x_t`` at step t."""
        ab = self.alpha_bar(t, x_t.ndim)
        return (x_t - ab.sqrt() * x0) / (1.0 - ab).sqrt()

    def ddim_move(self, x0: torch.Tensor, eps: torch.Tensor, t_to: int) -> torch.Tensor:
        """Deterministic DDIM (eta 0) point at step ``t_to`` given x0 and noise estimates."""
        ab = self.alphas_cumprod[t_to].to(x0.device)
        return ab.sqrt() * x0 + (1.0 - ab).sqrt() * eps


def timestep_grid(noise_level: int, steps: int) -> list[int]:
    """Increasing timesteps 0 .. noise_level-1 with ``steps`` intervals (fewer if they would repeat).

    The paper's recipe (L = 400, 399 steps) gives every step 0..399 as in the published code.
    """
    if noise_level < 2:
        raise ValueError(f"noise level must be at least 2, got {noise_level}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    last = noise_level - 1
    grid = np.unique(np.round(np.linspace(0, last, min(steps, last) + 1)).astype(int))
    return [int(v) for v in grid]
