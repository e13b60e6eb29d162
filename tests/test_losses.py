"""Losses: NT-Xent against a loop reference and at its numerical edges; EP constraints per violation type."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bioexp.losses import ep_constraint_loss, nt_xent
from bioexp.nets.ep_prior import DEFAULT_LATENT_DIMS, GaussianWaveDecoder


def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """SimCLR's definition, one anchor at a time in float64 with an explicit log-sum-exp."""
    views = [v / v.norm() for v in torch.cat([z1, z2]).double()]
    n, batch = len(views), len(z1)
    total = 0.0
    for i in range(n):
        positive = (i + batch) % n
        logits = [float(views[i] @ views[j]) / temperature for j in range(n) if j != i]
        top = max(logits)
        log_denominator = top + math.log(sum(math.exp(s - top) for s in logits))
        total += log_denominator - float(views[i] @ views[positive]) / temperature
    return total / n


@pytest.mark.parametrize("temperature", [0.2, 0.5, 1.0])
def test_nt_xent_matches_reference(temperature: float):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    loss = nt_xent(z1, z2, temperature)
    assert loss.dtype == torch.float32 and loss.shape == ()
    assert abs(loss.item() - reference_nt_xent(z1, z2, temperature)) < 1e-5
    # symmetric in the two views
    assert abs(nt_xent(z2, z1, temperature).item() - loss.item()) < 1e-6


def test_nt_xent_is_lower_for_aligned_views():
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(16, 32, generator=g)
    aligned = nt_xent(z1, z1 + 0.05 * torch.randn(16, 32, generator=g))
    unrelated = nt_xent(z1, torch.randn(16, 32, generator=g))
    assert aligned < 0.5 < math.log(31) - 0.5 < unrelated  # log(2B - 1): chance level


def finite_with_finite_grads(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z1, z2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = nt_xent(z1, z2, temperature)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    return loss.detach()


def test_nt_xent_finite_at_tiny_temperature():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    loss = finite_with_finite_grads(z1, z2, 1e-3)
    assert abs(loss.item() - reference_nt_xent(z1, z2, 1e-3)) < 1e-3 * max(1.0, loss.item())
    assert loss > 10  # random views at T=1e-3: the hardest negative dominates, the loss is large, not inf
    perfect = finite_with_finite_grads(z1, z1, 1e-3)
    assert perfect.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("temperature", [0.2, 1e-3])
def test_nt_xent_identical_and_zero_vectors_give_log_of_candidates(temperature: float):
    """All views equal (or all zero): every candidate is as similar as the positive -> log(2B - 1)."""
    same = torch.ones(6, 4)
    assert finite_with_finite_grads(same, same, temperature).item() == pytest.approx(math.log(11), abs=1e-5)
    zeros = torch.zeros(6, 4)
    assert finite_with_finite_grads(zeros, zeros, temperature).item() == pytest.approx(math.log(11), abs=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_nt_xent_half_precision_inputs_and_autocast(dtype: torch.dtype):
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g)
    full = nt_xent(z1, z2, 0.2)
    for temperature in (0.2, 1e-3):
        half = finite_with_finite_grads(z1.to(dtype), z2.to(dtype), temperature)
        assert half.dtype == torch.float32
    assert nt_xent(z1.to(dtype), z2.to(dtype), 0.2).item() == pytest.approx(full.item(), abs=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = nt_xent(z1, z2, 0.2)
    assert autocast.dtype == torch.float32 and abs(autocast.item() - full.item()) < 1e-6


def test_nt_xent_rejects_mismatched_views():
    with pytest.raises(ValueError, match="same shape"):
        nt_xent(torch.zeros(4, 8), torch.zeros(3, 8))


def wave_params(tau=(0.2, 0.35, 0.65), sigma=(0.012, 0.008, 0.03), gate=(1.0, 1.0, 1.0), batch: int = 4) -> dict:
    """Decoder-style params with the same values for every sample."""
    return {wave: {"tau": torch.full((batch,), t), "sigma": torch.full((batch,), s), "gate": torch.full((batch,), g)}
            for wave, t, s, g in zip(("P", "QRS", "T"), tau, sigma, gate, strict=True)}


def test_ep_loss_vanishes_for_a_physiological_beat():
    for sigma in [(0.012, 0.008, 0.03), (0.006, 0.005, 0.02), (0.02, 0.015, 0.035)]:
        total, terms = ep_constraint_loss(wave_params(sigma=sigma))
        assert set(terms) == {"order", "pr", "qt", "sigma"}
        assert total < 1e-3 and all(0 <= v < 1e-3 for v in terms.values())
        torch.testing.assert_close(total, sum(terms.values()))


def test_ep_loss_vanishes_for_the_decoder_at_init():
    torch.manual_seed(0)
    z = {name: torch.randn(8, size) for name, size in DEFAULT_LATENT_DIMS.items()}
    _, params = GaussianWaveDecoder()(z, 100)
    total, _ = ep_constraint_loss(params)
    assert total < 1e-3


@pytest.mark.parametrize(("name", "params", "violation"), [
    ("order", {"tau": (0.42, 0.35, 0.65)}, 0.07),    # P after QRS
    ("order", {"tau": (0.2, 0.7, 0.65)}, 0.05),      # QRS after T
    ("pr", {"tau": (0.33, 0.35, 0.65)}, 0.02),       # PR 0.02 < 0.04
    ("qt", {"tau": (0.2, 0.35, 0.40)}, 0.03),        # QT 0.05 < 0.08
    ("sigma", {"sigma": (0.05, 0.008, 0.03)}, 0.025),  # P too wide (> 0.025)
    ("sigma", {"sigma": (0.012, 0.008, 0.003)}, 0.002),  # T too narrow (< 0.005)
])
def test_ep_loss_penalises_each_violation_by_about_its_size(name: str, params: dict, violation: float):
    total, terms = ep_constraint_loss(wave_params(**params))
    assert terms[name].item() == pytest.approx(violation, rel=0.1)
    assert total >= terms[name]


def test_ep_loss_is_weighted_by_gates_as_constants():
    violated = {"tau": (0.33, 0.35, 0.40), "sigma": (0.05, 0.008, 0.03)}
    _, full = ep_constraint_loss(wave_params(**violated))
    _, faded = ep_constraint_loss(wave_params(**violated, gate=(0.5, 0.4, 0.2)))
    torch.testing.assert_close(faded["pr"], 0.5 * 0.4 * full["pr"])    # P and QRS gates
    torch.testing.assert_close(faded["qt"], 0.4 * 0.2 * full["qt"])    # QRS and T gates
    torch.testing.assert_close(faded["sigma"], 0.5 * full["sigma"])    # the too-wide P wave's gate

    params = wave_params(**violated)
    for p in params.values():
        p["tau"].requires_grad_()
        p["gate"].requires_grad_()
    total, _ = ep_constraint_loss(params)
    total.backward()
    assert params["P"]["gate"].grad is None  # fading a wave must not be a way to satisfy the constraints
    # PR too short pushes P earlier and QRS later; QT too short pushes T later
    assert params["P"]["tau"].grad[0] > 0.1 and params["T"]["tau"].grad[0] < -0.1


def test_ep_loss_custom_bounds_and_margins():
    params = wave_params(tau=(0.2, 0.3, 0.45))  # PR 0.10, QT 0.15
    assert ep_constraint_loss(params)[0] < 1e-3
    _, terms = ep_constraint_loss(params, pr_min=0.12, qt_min=0.2, sigma_bounds={"P": (0.015, 0.03)})
    assert terms["pr"].item() == pytest.approx(0.02, rel=0.1)
    assert terms["qt"].item() == pytest.approx(0.05, rel=0.1)
    assert terms["sigma"].item() == pytest.approx(0.003, rel=0.1)  # P sigma 0.012 below the new lower bound


def test_published_ep_loss_softplus_hinge_with_differentiable_gates():
    """sharpness=1, gates differentiable, order weighted by all three gates, absolute sigma hinges (published)."""


    published = {"sharpness": 1.0, "detach_gates": False, "order_gate": "all", "relative_sigma_sharpness": False}
    params = wave_params(tau=(0.2, 0.35, 0.65), sigma=(0.012, 0.008, 0.03), gate=(0.9, 0.8, 0.7))
    for p in params.values():
        p["gate"].requires_grad_()
    total, terms = ep_constraint_loss(params, **published)
    g = {"P": 0.9, "QRS": 0.8, "T": 0.7}
    sp = lambda v: F.softplus(torch.tensor(v)).item()  # noqa: E731
    assert terms["order"].item() == pytest.approx(0.9 * 0.8 * 0.7 * (sp(0.2 - 0.35) + sp(0.35 - 0.65)), rel=1e-5)
    assert terms["pr"].item() == pytest.approx(0.9 * 0.8 * sp(0.04 - 0.15), rel=1e-5)
    assert terms["qt"].item() == pytest.approx(0.8 * 0.7 * sp(0.08 - 0.30), rel=1e-5)
    sigma = sum(g[w] * (sp(lo - s) + sp(s - hi)) for w, s, (lo, hi) in zip(
        ("P", "QRS", "T"), (0.012, 0.008, 0.03), ((0.003, 0.025), (0.002, 0.020), (0.005, 0.040)), strict=True))
    assert terms["sigma"].item() == pytest.approx(sigma, rel=1e-5)
    total.backward()
    assert params["P"]["gate"].grad.sum() > 0  # shrinking a gate lowers the published loss
    with pytest.raises(ValueError, match="unknown order_gate"):
        ep_constraint_loss(params, order_gate="some")
