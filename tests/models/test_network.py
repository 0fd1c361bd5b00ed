"""Network shapes, parameter counts per profile, PCM masks, IECA pooling and the missing-value path."""

from __future__ import annotations

import pytest
import torch

from diff3m.models.ehr import EhrEncoder
from diff3m.models.network import Diff3MNet, count_parameters
from diff3m.models.network.masking import checkerboards, soft_masks
from diff3m.models.profiles import PROFILES, get_profile

ENC = EhrEncoder()


def build(name: str, device: str = "cpu") -> Diff3MNet:
    with torch.device(device):
        return Diff3MNet(get_profile(name), ENC.n_tokens, ENC.group_indices())


def test_paper_profile_matches_published_size() -> None:
    net = build("paper", "meta")
    total = count_parameters(net)
    main = count_parameters(net.main_unet())
    assert abs(total - 290e6) / 290e6 < 0.03, total
    assert abs(main - 113e6) / 113e6 < 0.03, main
    p = net.profile
    assert (p.image_size, p.base_channels, p.channel_mult, p.num_res_blocks) == (
        256,
        128,
        (1, 1, 2, 2, 4, 4),
        2,
    )
    assert (p.noise_level, p.steps, p.timesteps, p.token_width) == (400, 399, 1000, 512)


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_forward_shapes_and_sizes(name: str) -> None:
    torch.manual_seed(0)
    net = build(name).eval()
    p = net.profile
    n = count_parameters(net)
    assert n < (20e6 if name == "demo" else 1e6)
    x = torch.rand(2, 1, p.image_size, p.image_size)
    t = torch.tensor([0, p.timesteps - 1])
    values, present = (torch.from_numpy(a) for a in ENC.encode_batch([{"age": 50, "sex": "F"}, {}]))
    with torch.inference_mode():
        cond = net.condition(x, values, present)
        eps, gen = net(x, t, cond)
        eps_only, none = net(x, t, cond, with_gen=False)
    assert cond.shape == (2, p.token_width)
    assert eps.shape == gen.shape == x.shape
    assert none is None and torch.equal(eps, eps_only)


def test_sizes_grow_from_tiny_to_paper() -> None:
    sizes = [count_parameters(build(n, "meta")) for n in ("tiny", "demo", "paper")]
    assert sizes == sorted(sizes) and len(PROFILES) == 3


def test_masks_complementary_and_t_dependent() -> None:
    c1, c2 = checkerboards(6, 5)
    assert torch.equal(c1 + c2, torch.ones(6, 5))
    assert c1.sum() in (15, 14, 16) and c1[0, 0] != c1[0, 1] and c1[0, 0] != c1[1, 0]
    t = torch.tensor([0, 250, 1000])
    m1, m2 = soft_masks(t, 1000, 6, 5)
    assert torch.equal(m1[0, 0], c1) and torch.equal(m2[0, 0], c2)  # t=0: hard checkerboards
    assert torch.allclose(m1[1, 0][c1 == 0], torch.tensor(0.25))  # hidden pixels fade in as t/T
    assert torch.allclose(m1[1, 0][c1 == 1], torch.tensor(1.0))
    assert torch.allclose(m1[2], torch.ones(1, 6, 5)) and torch.allclose(m2[2], torch.ones(1, 6, 5))


def test_gen_combines_each_branch_on_the_pixels_it_did_not_see() -> None:
    torch.manual_seed(0)
    net = build("tiny").eval()
    for p in net.mask_head.parameters():  # make the masked head non-zero (it starts zero-initialised)
        torch.nn.init.normal_(p, std=0.1)
    x = torch.rand(1, 1, 32, 32)
    t = torch.tensor([0])
    with torch.inference_mode():
        _, gen = net(x, t)
        net.mask_encoder2.load_state_dict(build("tiny").mask_encoder2.state_dict())  # perturb branch 2 only
        _, gen2 = net(x, t)
    c1, c2 = checkerboards(32, 32)
    changed = (gen - gen2).abs()[0, 0] > 1e-7
    assert changed.any()
    assert not changed[c2 == 1].any()  # branch 2 fills only the pixels it masked out (checkerboard 1)


def test_missing_values_use_learned_embedding_not_zero() -> None:
    torch.manual_seed(0)
    net = build("tiny").eval()
    x = torch.rand(3, 1, 32, 32)
    full = {
        "sex": "M",
        "age": 60,
        "view": "PA",
        "bmi": 30,
        "systolic": 140,
        "diastolic": 90,
        "height": 180,
        "weight": 97,
    }
    values, present = (torch.from_numpy(a) for a in ENC.encode_batch([full, {**full, "bmi": None}, {}]))
    assert present[2].sum() == 0 and present[1].sum() == ENC.n_tokens - 1
    with torch.inference_mode():
        cond = net.condition(x, values, present)
        tokens = net.ieca.tokenizer(values, present)
    assert torch.isfinite(cond).all()
    assert not torch.allclose(cond[0], cond[1])
    assert torch.allclose(tokens[2], net.ieca.tokenizer.norm(net.ieca.tokenizer.missing))


def test_stage2_initialisation_copies_encoder() -> None:
    net = build("tiny")
    net.init_masked_branch()
    for a, b in zip(net.encoder.parameters(), net.mask_encoder1.parameters(), strict=True):
        assert torch.equal(a, b)
    frozen = {id(p) for m in net.frozen_in_stage2() for p in m.parameters()}
    assert {id(p) for p in net.encoder.parameters()} <= frozen
    assert {id(p) for p in net.ieca.query.parameters()} <= frozen
    assert not {id(p) for p in net.mask_encoder1.parameters()} & frozen
