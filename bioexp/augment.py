"""Batch ECG augmentations for contrastive views: pure torch on ``[B, leads, T]``, on any device.

Randomness comes from an explicit ``generator`` (default: the global RNG) so views are reproducible.
Random tensors are drawn on the generator's device and moved to ``x``'s, which lets one seeded CPU
generator drive augmentation on a GPU batch.
"""

from __future__ import annotations

import torch


def _device(x: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else x.device


def _uniform(x: torch.Tensor, shape: tuple[int, ...], low: float, high: float,
             generator: torch.Generator | None) -> torch.Tensor:
    u = torch.rand(shape, generator=generator, device=_device(x, generator))
    return (low + (high - low) * u).to(device=x.device, dtype=x.dtype)


def circular_shift(x: torch.Tensor, max_shift: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
    """Roll each sample along time by its own integer shift in ``[-max_shift, max_shift]`` (leads together).

    A circular roll keeps every sample of the window, only moving where the beat sits.
    """
    batch, _, length = x.shape
    shifts = torch.randint(-max_shift, max_shift + 1, (batch,), generator=generator, device=_device(x, generator))
    index = (torch.arange(length, device=x.device) - shifts.to(x.device)[:, None]) % length  # torch.roll semantics
    return torch.gather(x, 2, index[:, None, :].expand_as(x))


def lead_scale(x: torch.Tensor, low: float = 0.8, high: float = 1.2,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Scale each lead of each sample by its own factor in ``[low, high)`` (electrode gain/placement)."""
    return x * _uniform(x, x.shape[:2] + (1,), low, high, generator)


def gaussian_noise(x: torch.Tensor, std: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of standard deviation ``std``."""
    noise = torch.randn(x.shape, generator=generator, device=_device(x, generator))
    return x + std * noise.to(device=x.device, dtype=x.dtype)


def lead_dropout(x: torch.Tensor, p: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole leads independently with probability ``p`` (a missing lead), without rescaling the rest."""
    keep = torch.rand(x.shape[:2] + (1,), generator=generator, device=_device(x, generator)) >= p
    return x * keep.to(x.device)


def ecg_augment(x: torch.Tensor, max_shift: int = 50, scale: tuple[float, float] = (0.8, 1.2), noise_std: float = 0.05,
                lead_dropout_p: float = 0.1, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view: shift, per-lead scale, noise, then lead dropout (so dropped leads are exactly zero)."""
    x = circular_shift(x, max_shift, generator)
    x = lead_scale(x, scale[0], scale[1], generator)
    x = gaussian_noise(x, noise_std, generator)
    return lead_dropout(x, lead_dropout_p, generator)


def ecg_views(x: torch.Tensor, max_shift: int = 50, scale: tuple[float, float] = (0.8, 1.2), noise_std: float = 0.05,
              lead_dropout: float = 0.1, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independently augmented views of the batch: the positive pairs for ``nt_xent``."""
    first = ecg_augment(x, max_shift, scale, noise_std, lead_dropout, generator)
    return first, ecg_augment(x, max_shift, scale, noise_std, lead_dropout, generator)
