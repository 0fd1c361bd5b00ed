"""Image-EHR cross-attention (IECA): field tokens pooled by attention to a query from the clean image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from diff3m.models.network.unet import build_encoder, run_encoder
from diff3m.models.profiles import Profile


class FieldTokenizer(nn.Module):
    """Token i = LayerNorm(w_i * value_i + b_i), or LayerNorm(missing_i) when the value is absent."""

    def __init__(self, n_tokens: int, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_tokens, width))
        self.bias = nn.Parameter(torch.randn(n_tokens, width))
        self.missing = nn.Parameter(torch.randn(n_tokens, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, n] values and presence -> [B, n, width] tokens."""
        tokens = self.weight * values.unsqueeze(-1) + self.bias
        tokens = torch.where(present.unsqueeze(-1), tokens, self.missing.expand_as(tokens))
        return self.norm(tokens)


class ImageQuery(nn.Module):
    """Encodes the clean image (no timestep) and max-pools it to one query vector."""

    def __init__(self, p: Profile) -> None:
        super().__init__()
        self.blocks, chans = build_encoder(p, plain=True)
        self.proj = nn.Sequential(nn.Linear(chans[-1], p.token_width), nn.LayerNorm(p.token_width))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        """[B, 1, H, W] -> [B, width]."""
        h = run_encoder(self.blocks, x0, None)[-1]
        return self.proj(F.adaptive_max_pool2d(h, 1).flatten(1))


class IECA(nn.Module):
    """Softmax attention pooling of demographic and EHR tokens (separately) with the image query."""

    def __init__(self, p: Profile, n_tokens: int, groups: dict[str, list[int]]) -> None:
        super().__init__()
        self.width = p.token_width
        self.tokenizer = FieldTokenizer(max(n_tokens, 1), p.token_width)
        self.query = ImageQuery(p)
        self.group_names = [g for g, idx in groups.items() if idx]
        for name in self.group_names:
            self.register_buffer(
                f"group_{name}", torch.tensor(groups[name], dtype=torch.long), persistent=False
            )

    def pool(self, tokens: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Attention-weighted sum of [B, n, d] tokens with weights softmax(token . query / sqrt(d))."""
        weights = torch.softmax(tokens @ query.unsqueeze(-1) / math.sqrt(self.width), dim=1)
        return (tokens * weights).sum(dim=1)

    def forward(self, x0: torch.Tensor, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The conditioning vector [B, width] added to the timestep embedding."""
        query = self.query(x0)
        tokens = self.tokenizer(values, present)
        cond = torch.zeros_like(query)
        for name in self.group_names:
            idx = getattr(self, f"group_{name}")
            cond = cond + self.pool(tokens[:, idx], query)
        return cond
