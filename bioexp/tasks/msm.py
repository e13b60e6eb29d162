"""Masked signal modeling (MSM): reconstruct masked 1 s patches of multichannel biosignals.

``loss = MSE(x_hat, x) on masked patches + stft_weight * MR-STFT(completed, x)``, where ``completed`` is
the input with its masked patches replaced by the reconstruction: judged on the raw reconstruction, the
spectrum can be matched without any content in the masked patches (their outputs stayed near zero and
masked MSE never fell below predicting zeros). A mask is drawn per example (``mask_ratio`` of the
patches, ``random`` or one contiguous ``block``), shared by all channels, and the masked patches are
zeroed before the encoder. Validation and test masks are fixed per batch, so ``val/loss`` does not
wander between epochs. ``msm_loss_<channel>`` (val/test) is each channel's masked MSE and
``zero_msm_loss`` that of predicting zeros, the baseline a useful model must beat (~1 on z-scored windows).
"""

from __future__ import annotations

from typing import Any

import torch

from bioexp.losses import multi_resolution_stft_loss, stft_magnitude
from bioexp.masking import apply_mask, expand_mask, patch_mask
from bioexp.tasks.base import Task, build

Batch = tuple[torch.Tensor, torch.Tensor]


class MaskedSignalModeling(Task):
    """TTM encoder on the masked signal, a per-patch linear decoder back to ``[B, C, L]``.

    ``channels`` (names, from the data) are recorded so fine-tuning knows which channel each decoder
    block and channel-mixing weight belongs to.
    """

    def __init__(self, encoder: dict[str, Any], optimizer: dict[str, Any], in_channels: int, input_length: int,
                 scheduler: dict[str, Any] | None = None, channels: list[str] | None = None, patch_size: int = 125,
                 mask_ratio: float = 0.4, mask_type: str = "random", stft_weight: float = 0.3,
                 stft: dict[str, Any] | None = None) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.stft = {"fft_sizes": [512, 1024, 2048], "hop_sizes": [128, 256, 512], "floor_db": 60.0, **(stft or {})}
        if stft_weight > 0:  # a window too short for an FFT size fails here, not mid-epoch
            for n_fft in self.stft["fft_sizes"]:
                stft_magnitude(torch.zeros(1, input_length), n_fft, n_fft // 4)
        patch_mask(1, input_length // patch_size, mask_ratio, mask_type)  # validates ratio and type
        self.encoder = build({**encoder, "in_channels": in_channels, "context_length": input_length,
                              "patch_size": patch_size})
        self.decoder = build({"_target_": "bioexp.nets.ttm.PatchDecoder", "latent_dim": self.encoder.latent_dim,
                              "out_channels": in_channels, "patch_size": patch_size})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, P, D]`` of an unmasked signal (for probes and downstream use)."""
        return self.encoder(x)

    def reconstruct(self, x: torch.Tensor,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masked input, reconstruction (both ``[B, C, L]``) and the patch mask ``[B, P]``."""
        hp = self.hparams
        mask = patch_mask(len(x), x.shape[-1] // hp.patch_size, hp.mask_ratio, hp.mask_type, generator).to(x.device)
        masked = apply_mask(x, mask, hp.patch_size)
        return masked, self.decoder(self.encoder(masked)), mask

    def _losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        hp = self.hparams
        _, x_hat, mask = self.reconstruct(x, generator)
        weight = expand_mask(mask, x.shape[1], hp.patch_size).float()
        x, x_hat = x.float(), x_hat.float()
        out = {"msm_loss": ((x_hat - x) ** 2 * weight).sum() / weight.sum()}
        completed = torch.where(weight.bool(), x_hat, x)
        out["stft_loss"] = (multi_resolution_stft_loss(completed, x, **self.stft) if hp.stft_weight > 0
                            else torch.zeros((), device=x.device))
        out["loss"] = out["msm_loss"] + hp.stft_weight * out["stft_loss"]
        if generator is not None:  # evaluation: per-channel masked MSE and the predict-zeros baseline
            per_channel = ((x_hat - x) ** 2 * weight).sum(dim=(0, 2)) / weight.sum(dim=(0, 2))
            for name, value in zip(hp.channels or range(x.shape[1]), per_channel, strict=True):
                out[f"msm_loss_{name}"] = value
            out["zero_msm_loss"] = (x**2 * weight).sum() / weight.sum()
        return out

    def _log(self, stage: str, values: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, on_step=stage == "train" and name == "loss", on_epoch=True,
                     prog_bar=name in ("loss", "msm_loss"), batch_size=batch_size, sync_dist=stage != "train")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self._losses(batch[0])
        self._log("train", values, len(batch[0]))
        return values["loss"]

    def _eval_step(self, batch: Batch, batch_idx: int, stage: str) -> None:
        self._log(stage, self._losses(batch[0], torch.Generator().manual_seed(batch_idx)), len(batch[0]))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")
