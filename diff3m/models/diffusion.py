"""The Diff3M sampling loops: the image is taken to a noise level and DDIM-denoised back.

Two ways there (``ENCODINGS``): ``inversion`` (published: deterministic DDIM inversion, with the masked
reconstruction standing in for x_t) and ``noise`` (a forward q-sample with fresh noise, as in AnoDDPM).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from diff3m.models.schedule import X0_CLIP, DiffusionSchedule

ENCODINGS = ("inversion", "noise")

# denoiser(x_t, t) -> (predicted noise, masked reconstruction of x_t or None)
Denoiser = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
# conditional model(x_t, t, cond) -> the same pair
ConditionalModel = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]


def guided(
    model: ConditionalModel, cond: torch.Tensor | None, reference: torch.Tensor | None, scale: float
) -> Denoiser:
    """The denoiser for ``cond``, pushed ``scale`` times as far from ``reference`` as ``cond`` lies.

    Guidance as in classifier-free guidance (Ho & Salimans 2022), with a reference condition in place
    of the unconditional one: ``out = out_ref + scale * (out_cond - out_ref)`` for the noise and the
    masked reconstruction. Scale 1 (or no reference) is the plain conditional model, one pass per step;
    otherwise both conditions run as one batch of twice the size.
    """
    if reference is None or cond is None or scale == 1.0:
        return lambda x, t: model(x, t, cond)

    def denoise(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        eps, gen = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, reference]))
        eps_c, eps_r = eps.chunk(2)
        if gen is None:
            return eps_r + scale * (eps_c - eps_r), None
        gen_c, gen_r = gen.chunk(2)
        return eps_r + scale * (eps_c - eps_r), gen_r + scale * (gen_c - gen_r)

    return denoise


def _estimate(
    schedule: DiffusionSchedule, denoiser: Denoiser, x: torch.Tensor, t: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 and noise estimates at step t; the masked reconstruction ``gen`` stands in for x_t in x0."""
    tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
    eps, gen = denoiser(x, tt)
    eps = eps.float()
    reference = x if gen is None else gen.float()
    x0 = schedule.predict_x0(reference, tt, eps).clamp(*X0_CLIP)
    return x0, schedule.eps_from_x0(x, tt, x0)


def ddim_invert(
    schedule: DiffusionSchedule, denoiser: Denoiser, x0: torch.Tensor, grid: list[int]
) -> torch.Tensor:
    """Deterministic DDIM inversion from the clean image (at grid[0]) up to grid[-1]."""
    x = x0
    for t_from, t_to in zip(grid[:-1], grid[1:], strict=True):
        x0_hat, eps = _estimate(schedule, denoiser, x, t_from)
        x = schedule.ddim_move(x0_hat, eps, t_to)
    return x


def ddim_denoise(
    schedule: DiffusionSchedule, denoiser: Denoiser, x_l: torch.Tensor, grid: list[int]
) -> torch.Tensor:
    """Deterministic DDIM denoising (eta 0) from grid[-1] back down to grid[0]."""
    x = x_l
    down = grid[::-1]
    for t_from, t_to in zip(down[:-1], down[1:], strict=True):
        x0_hat, eps = _estimate(schedule, denoiser, x, t_from)
        x = schedule.ddim_move(x0_hat, eps, t_to)
    return x


def reconstruct(
    schedule: DiffusionSchedule, denoiser: Denoiser, x0: torch.Tensor, grid: list[int]
) -> torch.Tensor:
    """The model's "normal-looking" version of ``x0``: invert to the noise level, then denoise."""
    return ddim_denoise(schedule, denoiser, ddim_invert(schedule, denoiser, x0, grid), grid)


def noised_reconstruction(
    schedule: DiffusionSchedule, denoiser: Denoiser, x0: torch.Tensor, grid: list[int], noise: torch.Tensor
) -> torch.Tensor:
    """``x0`` noised to grid[-1] with ``noise`` (forward q-sample), then DDIM-denoised back to grid[0].

    The noise hides what the model cannot explain; denoising fills it in as the model's normal. One step
    (grid [0, L-1]) is the model's x0 estimate at L.
    """
    t = torch.full((x0.shape[0],), grid[-1], device=x0.device, dtype=torch.long)
    return ddim_denoise(schedule, denoiser, schedule.q_sample(x0, t, noise), grid)
