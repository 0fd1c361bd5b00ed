"""The Diff3M network: epsilon UNet + IECA conditioning + PCM masked encoders with a shared masked decoder."""

from __future__ import annotations

import torch
from monai.networks.nets.diffusion_model_unet import get_timestep_embedding
from torch import nn

from diff3m.models.network.ieca import IECA
from diff3m.models.network.masking import soft_masks
from diff3m.models.network.unet import (
    build_decoder,
    build_encoder,
    build_head,
    build_middle,
    run_decoder,
    run_encoder,
)
from diff3m.models.profiles import Profile


class Diff3MNet(nn.Module):
    """Predicts the noise of x_t and, through two checkerboard-masked branches, a reconstruction of x_t.

    Encoder blocks get the plain timestep embedding; middle and decoder blocks get
    ``LayerNorm(t_emb + cond)`` where ``cond`` is the IECA vector (zero without EHR).
    """

    def __init__(self, profile: Profile, n_tokens: int, groups: dict[str, list[int]]) -> None:
        super().__init__()
        p = profile
        self.profile = p
        width = p.token_width
        self.time_embed = nn.Sequential(nn.Linear(p.base_channels, width), nn.SiLU(), nn.Linear(width, width))
        self.emb_norm = nn.LayerNorm(width)
        self.ieca = IECA(p, n_tokens, groups)
        # main epsilon UNet
        self.encoder, skips = build_encoder(p)
        self.middle = build_middle(p)
        self.decoder = build_decoder(p, skips)
        self.head = build_head(p)
        # PCM: two masked encoders, one shared middle + decoder + head
        self.mask_encoder1, _ = build_encoder(p)
        self.mask_encoder2, _ = build_encoder(p)
        self.mask_middle = build_middle(p)
        self.mask_decoder = build_decoder(p, skips)
        self.mask_head = build_head(p)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """MLP of the sinusoidal embedding of t."""
        return self.time_embed(get_timestep_embedding(t, self.profile.base_channels))

    def condition(self, x0: torch.Tensor, values: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """IECA conditioning vector [B, width] for clean images and their EHR tokens (once per image)."""
        return self.ieca(x0, values, present)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, with_gen: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(eps_hat, gen): predicted noise and masked reconstruction of x_t (None if ``with_gen`` is off)."""
        temb = self.time_embedding(t)
        emb = self.emb_norm(temb if cond is None else temb + cond)
        hs = run_encoder(self.encoder, x_t, temb)
        h = self.middle(hs[-1], emb)
        eps = self.head(run_decoder(self.decoder, h, hs, emb))
        if not with_gen:
            return eps, None
        m1, m2 = soft_masks(t, self.profile.timesteps, x_t.shape[-2], x_t.shape[-1])
        hs1 = run_encoder(self.mask_encoder1, x_t * m1, temb)
        hs2 = run_encoder(self.mask_encoder2, x_t * m2, temb)
        skips = [torch.cat(pair, dim=0) for pair in zip(hs1, hs2, strict=True)]
        emb2 = torch.cat([emb, emb], dim=0)
        h = self.mask_middle(skips[-1], emb2)
        out1, out2 = self.mask_head(run_decoder(self.mask_decoder, h, skips, emb2)).chunk(2, dim=0)
        return eps, out1 * m2 + out2 * m1

    def init_masked_branch(self) -> None:
        """Stage 2 start: masked encoders from the main encoder, shared masked decoder from the main one."""
        self.mask_encoder1.load_state_dict(self.encoder.state_dict())
        self.mask_encoder2.load_state_dict(self.encoder.state_dict())
        self.mask_middle.load_state_dict(self.middle.state_dict())
        self.mask_decoder.load_state_dict(self.decoder.state_dict())

    def frozen_in_stage2(self) -> list[nn.Module]:
        """Parts frozen in stage 2 as published: main encoder, timestep embedding, image-query encoder."""
        return [self.encoder, self.time_embed, self.ieca.query]

    def masked_branch(self) -> list[nn.Module]:
        """The PCM branch (masked encoders, shared masked middle, decoder and head): only ``gen`` uses it."""
        return [self.mask_encoder1, self.mask_encoder2, self.mask_middle, self.mask_decoder, self.mask_head]

    def ehr_pathway(self) -> list[nn.Module]:
        """What turns the EHR into the conditioning and trains in stage 2: the field tokens."""
        return [self.ieca.tokenizer]

    def main_unet(self) -> list[nn.Module]:
        """The plain epsilon UNet (for parameter accounting)."""
        return [self.time_embed, self.encoder, self.middle, self.decoder, self.head]


def count_parameters(modules: nn.Module | list[nn.Module]) -> int:
    """Number of parameters in a module or list of modules."""
    mods = modules if isinstance(modules, list) else [modules]
    return sum(p.numel() for m in mods for p in m.parameters())
