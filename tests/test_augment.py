"""Contrastive ECG augmentations: exact rolls, whole-lead dropout, noise level, determinism from a generator."""

from __future__ import annotations

import pytest
import torch

from bioexp.augment import circular_shift, ecg_augment, ecg_views, gaussian_noise, lead_dropout, lead_scale


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ramp(batch: int, leads: int = 12, length: int = 100) -> torch.Tensor:
    """x[b, c, t] = t + 1000 c: the shift can be read off any sample."""
    t = torch.arange(length, dtype=torch.float32)
    return (t + 1000 * torch.arange(leads, dtype=torch.float32)[:, None]).expand(batch, leads, length).clone()


def test_circular_shift_is_an_exact_per_sample_roll():
    x = ramp(64)
    out = circular_shift(x, max_shift=50, generator=seeded())
    shifts = (-out[:, 0, 0]).long() % 100  # out[t] = x[(t - s) mod T], so out[0] = -s mod T
    shifts = torch.where(shifts > 50, shifts - 100, shifts)
    assert shifts.abs().max() <= 50 and len(set(shifts.tolist())) > 20  # per-sample shifts spread over the range
    for b in range(64):
        assert torch.equal(out[b], torch.roll(x[b], int(shifts[b]), dims=-1))
    assert torch.equal(circular_shift(x, max_shift=0, generator=seeded()), x)


def test_lead_scale_is_one_factor_per_sample_and_lead():
    x = torch.ones(32, 12, 50)
    out = lead_scale(x, 0.8, 1.2, generator=seeded())
    factors = out[..., 0]
    assert torch.equal(out, factors[..., None].expand_as(out))  # constant along time
    assert factors.min() >= 0.8 and factors.max() < 1.2 and factors.std() > 0.1
    assert factors.unique().numel() == 32 * 12


def test_gaussian_noise_has_the_requested_std():
    x = torch.full((64, 12, 100), 3.0)
    noise = gaussian_noise(x, std=0.05, generator=seeded()) - x
    assert abs(noise.std().item() - 0.05) < 0.001 and abs(noise.mean().item()) < 0.001


def test_lead_dropout_zeroes_whole_leads_at_rate_p():
    x = torch.randn(400, 12, 50, generator=seeded(1)) + 5  # no accidental zeros
    out = lead_dropout(x, p=0.25, generator=seeded())
    dropped = (out == 0).all(dim=-1)
    kept = (out == x).all(dim=-1)
    assert torch.equal(dropped | kept, torch.ones_like(dropped))  # each lead is either gone or untouched
    assert abs(dropped.float().mean().item() - 0.25) < 0.03  # 4800 leads: sd of the rate ~0.006
    assert torch.equal(lead_dropout(x, p=0.0, generator=seeded()), x)


def test_shapes_dtypes_and_determinism():
    x = torch.randn(8, 12, 100, generator=seeded(5), dtype=torch.float64)
    for fn in (circular_shift, lead_scale, gaussian_noise, lead_dropout, ecg_augment):
        a, b = fn(x, generator=seeded(7)), fn(x, generator=seeded(7))
        assert a.shape == x.shape and a.dtype == x.dtype and torch.equal(a, b), fn.__name__
        assert not torch.equal(fn(x, generator=seeded(8)), a), fn.__name__
    torch.manual_seed(3)
    first = ecg_views(x)
    torch.manual_seed(3)
    again = ecg_views(x)  # default: the global RNG
    assert all(torch.equal(u, v) for u, v in zip(first, again, strict=True))


def test_ecg_views_are_two_different_augmented_views():
    x = ramp(16).div(1000)
    v1, v2 = ecg_views(x, generator=seeded())
    assert v1.shape == v2.shape == x.shape and not torch.equal(v1, v2)
    assert not torch.equal(v1, x)
    # with every augmentation off a view is the input itself
    same1, same2 = ecg_views(x, max_shift=0, scale=(1.0, 1.0), noise_std=0.0, lead_dropout=0.0, generator=seeded())
    assert torch.equal(same1, x) and torch.equal(same2, x)
    # dropped leads are exactly zero even though noise was added before
    dropped = ecg_augment(x, lead_dropout_p=0.5, generator=seeded())
    assert ((dropped == 0).all(-1).float().mean() - 0.5).abs() < 0.15


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_generator_drives_augmentation_on_gpu():
    x = torch.randn(4, 12, 100)
    on_gpu = ecg_augment(x.cuda(), generator=seeded())
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), ecg_augment(x, generator=seeded()))
