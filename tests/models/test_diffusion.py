"""Schedule formulas and the DDIM inversion/denoising loop."""

from __future__ import annotations

import torch

from diff3m.models.diffusion import ddim_invert, guided, noised_reconstruction, reconstruct
from diff3m.models.schedule import DiffusionSchedule, ScheduleConfig, timestep_grid

SCHED = DiffusionSchedule(ScheduleConfig())


def test_linear_schedule_endpoints() -> None:
    ab = SCHED.alphas_cumprod.double()
    assert abs(float(ab[0]) - (1 - 1e-4)) < 1e-7
    assert float(ab[-1]) < 1e-4 and torch.all(ab[1:] < ab[:-1])


def test_paper_grid_is_every_step() -> None:
    grid = timestep_grid(400, 399)
    assert grid == list(range(400))
    assert (
        timestep_grid(300, 10)[0] == 0
        and timestep_grid(300, 10)[-1] == 299
        and len(timestep_grid(300, 10)) == 11
    )
    assert timestep_grid(5, 100) == [0, 1, 2, 3, 4]


def gaussian_denoiser(mu: torch.Tensor, s2: float):
    """The exact noise predictor for data ~ N(mu, s2) per pixel."""

    def den(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, None]:
        ab = SCHED.alpha_bar(t, x.ndim)
        eps = (1 - ab).sqrt() * (x - ab.sqrt() * mu) / (ab * s2 + 1 - ab)
        return eps, None

    return den


def test_inversion_then_denoising_reconstructs_input() -> None:
    torch.manual_seed(0)
    mu = torch.full((1, 1, 8, 8), 0.4)
    x0 = mu + 0.1 * torch.randn(2, 1, 8, 8)
    den = gaussian_denoiser(mu, 0.01)
    grid = timestep_grid(50, 49)
    x_l = ddim_invert(SCHED, den, x0, grid)
    assert (x_l - x0).abs().mean() > 0.05  # it really went into noise space
    x_hat = reconstruct(SCHED, den, x0, grid)
    err = (x_hat - x0).abs()
    assert err.max() < 0.02 and err.mean() < 5e-3  # the signal spread is 0.1


def test_gen_stands_in_for_x_t_in_the_x0_estimate() -> None:
    x0 = torch.full((1, 1, 4, 4), 0.5)
    zero_eps = torch.zeros_like(x0)
    shifted = ddim_invert(SCHED, lambda x, t: (zero_eps, x + 0.1), x0, [0, 10])
    plain = ddim_invert(SCHED, lambda x, t: (zero_eps, None), x0, [0, 10])
    ab0, ab10 = SCHED.alphas_cumprod[0], SCHED.alphas_cumprod[10]
    x0_hat = (x0 + 0.1) / ab0.sqrt()
    eps = (x0 - ab0.sqrt() * x0_hat) / (1 - ab0).sqrt()
    assert torch.allclose(shifted, ab10.sqrt() * x0_hat + (1 - ab10).sqrt() * eps, atol=1e-5)
    assert not torch.allclose(shifted, plain)



def test_noised_reconstruction_pulls_an_outlier_back_to_the_normal_data() -> None:
    """Forward noise then DDIM down: an exact denoiser for N(mu, s2) brings a far-off pixel back toward mu."""
    mu = torch.full((1, 1, 8, 8), 0.4)
    x0 = mu.clone()
    x0[..., 3:5, 3:5] = 0.9  # a "lesion" 0.5 above the normal mean, 5 standard deviations out
    den = gaussian_denoiser(mu, 0.01)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    grid = timestep_grid(300, 10)
    x_hat = noised_reconstruction(SCHED, den, x0, grid, noise)
    lesion, rest = (x_hat - x0)[..., 3:5, 3:5], (x_hat - x0)[..., :2, :]
    assert lesion.abs().mean() > 0.3  # the lesion is not reproduced: it shows in the residual
    assert rest.abs().mean() < 0.1  # normal pixels come back within the normal spread
    again = noised_reconstruction(SCHED, den, x0, grid, noise)
    assert torch.equal(x_hat, again)  # deterministic given the noise
    one_step = noised_reconstruction(SCHED, den, x0, [0, 299], noise)
    assert one_step.shape == x0.shape and (one_step - x0)[..., 3:5, 3:5].abs().mean() > 0.3


def test_guidance_extrapolates_from_the_reference_in_one_batched_call() -> None:
    calls: list[int] = []

    def model(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None):
        calls.append(x.shape[0])
        shift = torch.zeros(x.shape[0]) if cond is None else cond[:, 0]
        return x * 0 + shift.view(-1, 1, 1, 1), x + 2 * shift.view(-1, 1, 1, 1)

    x, t = torch.zeros(3, 1, 4, 4), torch.zeros(3, dtype=torch.long)
    cond, ref = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[0.5], [0.5], [0.5]])
    eps, gen = guided(model, cond, ref, 1.0)(x, t)  # scale 1: the plain model, one pass of 3
    assert calls == [3] and torch.equal(eps[:, 0, 0, 0], cond[:, 0])
    eps, gen = guided(model, cond, ref, 3.0)(x, t)  # ref + 3 (cond - ref), both in one pass of 6
    assert calls == [3, 6]
    assert torch.allclose(eps[:, 0, 0, 0], torch.tensor([2.0, 5.0, 8.0]))
    assert gen is not None and torch.allclose(gen[:, 0, 0, 0], 2 * torch.tensor([2.0, 5.0, 8.0]))
    eps, _ = guided(model, None, None, 3.0)(x, t)  # image-only: nothing to guide
    assert calls == [3, 6, 3] and torch.equal(eps, torch.zeros_like(eps))
    no_gen = guided(lambda a, b, c: (model(a, b, c)[0], None), cond, ref, 0.0)(x, t)
    assert no_gen[1] is None and torch.allclose(no_gen[0][:, 0, 0, 0], ref[:, 0])  # scale 0: the reference
