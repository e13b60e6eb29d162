"""Self-supervised ECG by reconstruction + EP constraints + contrast (EP-Prior and its baselines).

Training minimises ``L = lambda_recon * MSE(x_hat, x) + w_ep * L_EP + lambda_contrastive * NT-Xent`` with
the EP weight warmed up as ``lambda_ep * min(1, epoch / ep_warmup_epochs)``. Validation and test report the
published ``loss = lambda_recon * MSE + lambda_ep * L_EP`` (full EP weight, no augmented views), so the
monitored ``val/loss`` neither moves with the warm-up nor with random views. The same task trains EP-Prior
(structured encoder + Gaussian-wave decoder), its capacity-matched baseline (mean-pooled 256-D
latent + MLP decoder: the decoder has no wave parameters, so there is no EP term) and the ablation
(``lambda_ep=0``: the EP loss is still logged, for comparison, but not optimised).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bioexp.augment import ecg_views
from bioexp.losses import ep_constraint_loss, nt_xent
from bioexp.tasks.base import Task, build

Batch = tuple[torch.Tensor, torch.Tensor]


class EPPrior(Task):
    """Encoder ``x -> (latents, attention)``, decoder ``(latents, T) -> (x_hat, wave params)``.

    ``input_length`` (the window length, from the data) is recorded for decoders built for one
    length (the baseline's MLP decoder reads it through its config).
    """

    def __init__(self, encoder: dict[str, Any], decoder: dict[str, Any], projection: dict[str, Any],
                 optimizer: dict[str, Any], scheduler: dict[str, Any] | None = None, lambda_recon: float = 1.0,
                 lambda_ep: float = 0.1, lambda_contrastive: float = 0.1, ep_warmup_epochs: int = 10,
                 temperature: float = 0.2, augment: dict[str, Any] | None = None,
                 constraints: dict[str, Any] | None = None, input_length: int | None = None) -> None:
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.encoder = build(encoder)
        # Size keys left null in the decoder config come from the encoder (so `encoder.d_latent` resizes all).
        sizes = {"latent_dims": dict(getattr(self.encoder, "latent_dims", {})), "latent_dim": self.encoder.latent_dim}
        self.decoder = build({**decoder, **{k: v for k, v in sizes.items() if k in decoder and decoder[k] is None}})
        self.projection = build(projection, in_dim=self.encoder.latent_dim)
        self.augment = augment or {}
        self.constraints = constraints or {}

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """The projection head gets no gradient when NT-Xent is off (``ep_prior_no_contrast``)."""
        return self.hparams.lambda_contrastive <= 0

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.encoder(x)[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The concatenated latent: what probes and the contrastive head see."""
        return torch.cat(list(self(x).values()), dim=1)

    def wave_params(self, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
        """The decoder's interpretable parameters (empty for decoders without waves)."""
        return self.decoder(self(x), x.shape[-1])[1]

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x_hat`` and, for wave decoders, each wave's separate contribution (for figures)."""
        z = self(x)
        x_hat, _ = self.decoder(z, x.shape[-1])
        components = self.decoder.components(z, x.shape[-1]) if hasattr(self.decoder, "components") else {}
        return x_hat, components

    @property
    def ep_weight(self) -> float:
        warmup = max(1, self.hparams.ep_warmup_epochs)
        return self.hparams.lambda_ep * min(1.0, self.current_epoch / warmup)

    def _losses(self, x: torch.Tensor, train: bool = True,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        hp = self.hparams
        z, _ = self.encoder(x)
        x_hat, params = self.decoder(z, x.shape[-1])
        out = {"recon_loss": F.mse_loss(x_hat.float(), x.float())}
        total = hp.lambda_recon * out["recon_loss"]
        if params:
            out["ep_loss"], _ = ep_constraint_loss(params, **self.constraints)
            total = total + (self.ep_weight if train else hp.lambda_ep) * out["ep_loss"]
            for wave, p in params.items():
                out[f"gate_{wave}"] = p["gate"].detach().float().mean()
        if train and hp.lambda_contrastive > 0:
            views = [self.projection(self.embed(v)) for v in ecg_views(x, generator=generator, **self.augment)]
            out["contrast_loss"] = nt_xent(*views, temperature=hp.temperature)
            total = total + hp.lambda_contrastive * out["contrast_loss"]
        out["loss"] = total
        return out

    def _log(self, stage: str, values: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, on_step=stage == "train" and name == "loss", on_epoch=True,
                     prog_bar=name in ("loss", "recon_loss"), batch_size=batch_size, sync_dist=stage != "train")
        scale = getattr(self.decoder, "output_scale", None)
        if scale is not None:
            self.log(f"{stage}/output_scale", scale.detach().float(), on_epoch=True, batch_size=batch_size)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self._losses(batch[0])
        self._log("train", values, len(batch[0]))
        return values["loss"]

    def _eval_step(self, batch: Batch, batch_idx: int, stage: str) -> None:
        self._log(stage, self._losses(batch[0], train=False), len(batch[0]))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")
