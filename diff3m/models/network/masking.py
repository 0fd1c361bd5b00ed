"""Pixel-level checkerboard masking (PCM): two complementary soft masks that fade out as t grows."""

from __future__ import annotations

import torch


def checkerboards(
    height: int, width: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two complementary 1-pixel checkerboards (1 where kept), [H, W] each."""
    y, x = torch.meshgrid(
        torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij"
    )
    first = ((x + y) % 2).float()
    return first, 1.0 - first


def soft_masks(t: torch.Tensor, timesteps: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``m = checker * (1 - t/T) + t/T`` for both checkerboards, [B, 1, H, W] each."""
    c1, c2 = checkerboards(height, width, t.device)
    frac = (t.float() / timesteps).view(-1, 1, 1, 1)
    return c1 * (1 - frac) + frac, c2 * (1 - frac) + frac
