"""TinyTimeMixer (granite-tsfm) as a biosignal encoder, with the MSM decoder and a pooled head.

``tsfm_public`` costs seconds to import and is imported only when an encoder is built. The encoder is
built from a ``TinyTimeMixerConfig`` with random initialisation (never a hub download); a local
``pretrained_path`` (a ``save_pretrained`` folder or a ``state_dict`` file) optionally fills its weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bioexp.errors import BioexpError


class TTMEncoder(nn.Module):
    """``x [B, C, L]`` -> latents ``[B, L / patch, d_model]`` (TTM's per-channel latents averaged over channels).

    ``mode="common_channel"`` (TTM's default) shares every weight across channels; ``mix_channel`` adds
    channel-mixing layers whose sizes depend on the number of channels (see :mod:`bioexp.nets.inflate`).
    """

    def __init__(self, in_channels: int, context_length: int = 1250, patch_size: int = 125, d_model: int = 192,
                 num_layers: int = 3, expansion_factor: int = 2, dropout: float = 0.2, mode: str = "common_channel",
                 gated_attn: bool = True, scaling: str | None = None, pretrained_path: str | None = None,
                 **config: Any) -> None:
        super().__init__()
        if context_length % patch_size:
            raise BioexpError(f"context length {context_length} is not a whole number of {patch_size}-sample patches")
        from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel

        self.config = TinyTimeMixerConfig(
            context_length=context_length, patch_length=patch_size, patch_stride=patch_size,
            num_input_channels=in_channels, d_model=d_model, num_layers=num_layers,
            expansion_factor=expansion_factor, dropout=dropout, mode=mode, gated_attn=gated_attn,
            scaling=scaling, prediction_length=1, **config)
        self.model = TinyTimeMixerModel(self.config)
        self.in_channels, self.context_length, self.patch_size = in_channels, context_length, patch_size
        self.latent_dim, self.n_patches = d_model, context_length // patch_size
        if pretrained_path:
            self.load_pretrained(Path(pretrained_path))

    @property
    def blocks(self) -> nn.ModuleList:
        """The mixer blocks, input side first (staged unfreezing counts from the end)."""
        return self.model.encoder.mlp_mixer_encoder.mixers

    def load_pretrained(self, path: Path) -> None:
        if not path.exists():
            raise BioexpError(f"pretrained TTM weights not found at {path}; give a local save_pretrained folder "
                              "or state_dict file, or leave pretrained_path null for random initialisation")
        if path.is_dir():
            from tsfm_public.models.tinytimemixer import TinyTimeMixerModel

            state = TinyTimeMixerModel.from_pretrained(str(path), local_files_only=True).state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        if missing:
            raise BioexpError(f"{path} does not fit this TTM config (missing {missing[:3]} ...); "
                              "match d_model, num_layers, patch_size and context_length to the weights")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != (self.in_channels, self.context_length):
            raise ValueError(f"expected [B, {self.in_channels}, {self.context_length}], got {list(x.shape)}")
        hidden = self.model(past_values=x.transpose(1, 2)).last_hidden_state  # [B, C, P, D]
        return hidden.mean(dim=1)


class PatchDecoder(nn.Module):
    """Latents ``[B, P, D]`` -> signal ``[B, C, P * patch]``: one Linear(D -> C * patch) per patch."""

    def __init__(self, latent_dim: int, out_channels: int, patch_size: int) -> None:
        super().__init__()
        self.out_channels, self.patch_size = out_channels, patch_size
        self.proj = nn.Linear(latent_dim, out_channels * patch_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        b, p, _ = z.shape
        out = self.proj(z).view(b, p, self.out_channels, self.patch_size)
        return out.permute(0, 2, 1, 3).reshape(b, self.out_channels, p * self.patch_size)


class PooledHead(nn.Module):
    """Latents ``[B, P, D]`` -> ``[B, out_dim]``: mean over patches, then an MLP."""

    def __init__(self, latent_dim: int, out_dim: int = 1, hidden: int = 64, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(latent_dim), nn.Linear(latent_dim, hidden), nn.GELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.mean(dim=1))
