"""Patch masks for masked signal modeling: pure torch, one mask per example shared by all channels.

Randomness comes from an explicit ``generator`` (default: the global RNG), drawn on the generator's
device, so validation masks are reproducible and one seeded CPU generator can drive a GPU batch.
"""

from __future__ import annotations

import torch

MASK_TYPES = ("random", "block")


def patch_mask(batch: int, n_patches: int, ratio: float, kind: str = "random",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """``[batch, n_patches]`` bool, True = masked; exactly ``round(ratio * n_patches)`` (at least 1) per row.

    ``random`` picks patches anywhere (MAE-style: the lowest of uniform scores); ``block`` masks one
    contiguous span starting at a random patch.
    """
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask type {kind!r}; choose one of {', '.join(MASK_TYPES)}")
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}")
    device = generator.device if generator is not None else torch.device("cpu")
    n_mask = min(n_patches - 1, max(1, round(ratio * n_patches)))
    index = torch.arange(n_patches, device=device)
    if kind == "random":
        ranks = torch.rand(batch, n_patches, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
        return ranks < n_mask
    start = torch.randint(0, n_patches - n_mask + 1, (batch, 1), generator=generator, device=device)
    return (index >= start) & (index < start + n_mask)


def expand_mask(mask: torch.Tensor, channels: int, patch_size: int) -> torch.Tensor:
    """``[B, P]`` patch mask -> ``[B, C, P * patch_size]`` sample mask, the same on every channel."""
    return mask.repeat_interleave(patch_size, dim=1).unsqueeze(1).expand(-1, channels, -1)


def apply_mask(x: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``x [B, C, L]`` with masked patches zeroed (``L`` must be whole patches)."""
    if x.shape[-1] != mask.shape[1] * patch_size:
        raise ValueError(f"signal length {x.shape[-1]} is not {mask.shape[1]} patches of {patch_size}")
    keep = ~expand_mask(mask.to(x.device), x.shape[1], patch_size)
    return x * keep.to(x.dtype)
