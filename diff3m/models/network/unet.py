"""Guided-diffusion style UNet pieces (encoder, middle, decoder) built from MONAI diffusion blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUnetDownsample,
    DiffusionUNetResnetBlock,
    WrappedUpsample,
    zero_module,
)
from torch import nn

from diff3m.models.profiles import Profile


class PlainResBlock(DiffusionUNetResnetBlock):
    """A residual block without a timestep input (the image-query encoder sees only the clean image)."""

    def __init__(self, in_channels: int, out_channels: int, norm_groups: int) -> None:
        super().__init__(2, in_channels, 1, out_channels, norm_num_groups=norm_groups)
        del self.time_emb_proj

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # noqa: ARG002
        """Residual block of two GroupNorm-SiLU-conv stages."""
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        h = self.conv2(self.nonlinearity(self.norm2(h)))
        return self.skip_connection(x) + h


class EmbSequential(nn.ModuleList):
    """Layers applied in order; residual blocks also receive the (timestep) embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:  # type: ignore[override]
        """Run every layer."""
        for layer in self:
            if isinstance(layer, DiffusionUNetResnetBlock):
                x = layer(x, emb)
            else:
                x = layer(x)
        return x


def conv3(in_ch: int, out_ch: int) -> nn.Module:
    """A 3x3 same-padding 2-D convolution."""
    return Convolution(2, in_ch, out_ch, strides=1, kernel_size=3, padding=1, conv_only=True)


class SelfAttention(nn.Module):
    """Spatial self-attention over all positions: GroupNorm, 1x1 qkv, SDPA, zero-initialised projection."""

    def __init__(self, channels: int, num_heads: int, norm_groups: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x + attention(x)."""
        b, c, h, w = x.shape
        q, k, v = (
            self.qkv(self.norm(x).reshape(b, c, h * w)).reshape(b, 3 * self.num_heads, -1, h * w).chunk(3, 1)
        )
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h * w)).reshape(b, c, h, w)


def attention(p: Profile, ch: int) -> nn.Module:
    """Self-attention with the profile's head count."""
    return SelfAttention(ch, p.num_heads, p.norm_groups)


def _res(p: Profile, in_ch: int, out_ch: int, plain: bool) -> nn.Module:
    if plain:
        return PlainResBlock(in_ch, out_ch, p.norm_groups)
    return DiffusionUNetResnetBlock(2, in_ch, p.token_width, out_ch, norm_num_groups=p.norm_groups)


def build_encoder(p: Profile, in_channels: int = 1, plain: bool = False) -> tuple[nn.ModuleList, list[int]]:
    """The downsampling path: stem conv, res(+attention) blocks per level, strided-conv downsamples.

    Returns the blocks and the channel count of every skip output (for the decoder).
    """
    base = p.base_channels
    blocks = nn.ModuleList([EmbSequential([conv3(in_channels, base)])])
    chans = [base]
    ch, size = base, p.image_size
    for level, mult in enumerate(p.channel_mult):
        for _ in range(p.num_res_blocks):
            layers: list[nn.Module] = [_res(p, ch, mult * base, plain)]
            ch = mult * base
            if size in p.attention_resolutions:
                layers.append(attention(p, ch))
            blocks.append(EmbSequential(layers))
            chans.append(ch)
        if level != len(p.channel_mult) - 1:
            blocks.append(EmbSequential([DiffusionUnetDownsample(2, ch, use_conv=True)]))
            chans.append(ch)
            size //= 2
    return blocks, chans


def build_middle(p: Profile) -> EmbSequential:
    """The bottleneck: res block, self-attention, res block."""
    ch = p.base_channels * p.channel_mult[-1]
    return EmbSequential(
        [
            _res(p, ch, ch, False),
            attention(p, ch),
            _res(p, ch, ch, False),
        ]
    )


def build_decoder(p: Profile, skip_chans: list[int]) -> nn.ModuleList:
    """The upsampling path consuming the encoder skips (num_res_blocks + 1 blocks per level)."""
    chans = list(skip_chans)
    base = p.base_channels
    ch = base * p.channel_mult[-1]
    size = p.image_size // 2 ** (len(p.channel_mult) - 1)
    blocks = nn.ModuleList()
    for level, mult in list(enumerate(p.channel_mult))[::-1]:
        for i in range(p.num_res_blocks + 1):
            layers: list[nn.Module] = [_res(p, ch + chans.pop(), base * mult, False)]
            ch = base * mult
            if size in p.attention_resolutions:
                layers.append(attention(p, ch))
            if level and i == p.num_res_blocks:
                layers.append(
                    WrappedUpsample(
                        2,
                        ch,
                        ch,
                        mode="nontrainable",
                        interp_mode="nearest",
                        scale_factor=2.0,
                        align_corners=None,
                        post_conv=conv3(ch, ch),
                    )
                )
                size *= 2
            blocks.append(EmbSequential(layers))
    return blocks


def build_head(p: Profile, out_channels: int = 1) -> nn.Sequential:
    """GroupNorm, SiLU and a zero-initialised conv to the output channels."""
    return nn.Sequential(
        nn.GroupNorm(p.norm_groups, p.base_channels),
        nn.SiLU(),
        zero_module(conv3(p.base_channels, out_channels)),
    )


def run_encoder(blocks: nn.ModuleList, x: torch.Tensor, emb: torch.Tensor | None) -> list[torch.Tensor]:
    """Every block's output (the last one is the bottleneck input)."""
    hs = []
    for block in blocks:
        x = block(x, emb)
        hs.append(x)
    return hs


def run_decoder(
    blocks: nn.ModuleList, h: torch.Tensor, skips: list[torch.Tensor], emb: torch.Tensor
) -> torch.Tensor:
    """Decode, concatenating the encoder skips in reverse order."""
    skips = list(skips)
    for block in blocks:
        h = block(torch.cat([h, skips.pop()], dim=1), emb)
    return h
