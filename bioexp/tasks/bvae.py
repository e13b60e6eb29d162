"""Binary-latent VAE, optionally with its latent bits protected by a repetition code.

The encoder gives N = ``latent`` Bernoulli logits. Without ECC these N bits are the decoder's
input. With ``ecc_type=repetition`` they are a codeword: K = N / R information bits, each repeated R
times; the decoder sees the K majority-voted bits. The generative model is ``b ~ Bernoulli(0.5)^K,
x ~ p(x | b)`` either way, and the posterior over b is that of the majority vote of the sampled code
bits (computed exactly by :meth:`RepetitionCode.majority_prob`), so KL and ELBO are over the K
information bits: redundancy costs no extra KL, and both models pay the same for each bit they use.
A consistency loss keeps the R copies' probabilities in agreement.

Objective: ``recon + beta * KL + lambda_consistency * consistency`` (per image, in nats), ``beta``
warmed up linearly from 0 to ``beta_max`` over ``beta_warmup_epochs``, temperature
``max(temperature_min, temperature * exp(-temperature_decay * step))``. Validation and test use hard
Bernoulli samples (the discrete ELBO); ``val/loss`` is the -ELBO at beta = 1, so early stopping
compares epochs fairly during the warm-up.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.nn.functional as F

from bioexp.errors import BioexpError
from bioexp.nets.bvae import RepetitionCode, kl_to_uniform_bernoulli, mlp, relaxed_bernoulli, repetition_error_rate
from bioexp.tasks.base import Task

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]
ECC_TYPES = (None, "repetition")
DEFAULT_R = 2  # the guide's --ecc-R
R2_WARNING = ("model.ecc_R=2: a majority of two copies ties whenever one copy flips, so R=2 corrects no channel "
              "error (decoded-bit error rate = eps, as without a code; it only detects a disagreement). "
              "To correct one flip per bit use model.ecc_R=3 (model/bvae_set=set5 or set7)")
# Latent size of the training guide's parameter sets (conf/model/bvae_set/set<n>.yaml; a test keeps them in sync).
SET_LATENTS = {0: 100, 1: 100, 2: 200, 3: 200, 4: 200, 5: 300, 6: 200, 7: 300}


def check_ecc(latent: int, ecc_type: str | None, ecc_R: int | None) -> int | None:
    """Reject an ECC configuration that cannot work (naming the parameter sets that fit); return the R in use.

    ``ecc_R`` without ``ecc_type`` is an error (it would silently train a plain VAE); ``ecc_type`` without
    ``ecc_R`` uses the guide's R=2. R=2 logs a WARNING: a majority of two ties on one flipped copy, so it
    corrects no channel error.
    """
    if ecc_type not in ECC_TYPES:
        raise BioexpError(f"unknown model.ecc_type {ecc_type!r}; choose repetition or null (no ECC)")
    if ecc_type is None:
        if ecc_R is not None:
            raise BioexpError(f"model.ecc_R={ecc_R} has no effect without an ECC: add model.ecc_type=repetition "
                              "(or experiment=bvae_ecc), or drop model.ecc_R")
        return None
    ecc_R = DEFAULT_R if ecc_R is None else ecc_R
    if not isinstance(ecc_R, int) or isinstance(ecc_R, bool) or ecc_R < 2:
        raise BioexpError(f"model.ecc_R must be an integer >= 2 (the guide uses 2 or 3), got {ecc_R!r}")
    if latent % ecc_R:
        sets = [str(s) for s, n in SET_LATENTS.items() if n % ecc_R == 0]
        fit = f"parameter set {' or '.join(sets)} (model/bvae_set=set{sets[0]})" if sets else "a different latent"
        raise BioexpError(f"ECC needs model.latent divisible by model.ecc_R, but {latent} % {ecc_R} = "
                          f"{latent % ecc_R}; R={ecc_R} needs {fit}, or set model.latent to a multiple of {ecc_R}")
    if ecc_R == 2:
        log.warning(R2_WARNING)
    return ecc_R


class BinaryVAE(Task):
    """MLP encoder ``x -> N logits``, MLP decoder ``K bits -> x logits`` (K = N, or N / R with ECC)."""

    def __init__(self, input_dim: int, optimizer: dict[str, Any], hidden: int = 200, latent: int = 100,
                 depth: int = 2, ecc_type: str | None = None, ecc_R: int | None = None, beta_max: float = 1.0,
                 beta_warmup_epochs: int = 10, temperature: float = 1.0, temperature_decay: float = 1e-4,
                 temperature_min: float = 0.4, lambda_consistency: float = 0.01, iw_samples: int = 100,
                 flip_eps: tuple[float, ...] = (0.01, 0.05, 0.1), image_shape: list[int] | None = None,
                 scheduler: dict[str, Any] | None = None) -> None:
        super().__init__(optimizer, scheduler)
        ecc_R = check_ecc(latent, ecc_type, ecc_R)
        if not all(0 < eps < 1 for eps in flip_eps):
            raise BioexpError(f"model.flip_eps must be bit-flip probabilities in (0, 1), got {list(flip_eps)}")
        if not isinstance(iw_samples, int) or iw_samples < 1:
            raise BioexpError(f"model.iw_samples must be a positive number of importance samples, got {iw_samples!r}")
        self.save_hyperparameters()
        self.hparams.ecc_R = ecc_R  # the R in use (the guide's 2 when only ecc_type was given)
        self.code = RepetitionCode(ecc_R) if ecc_R else None
        self.info_bits = self.code.info_bits(latent) if self.code else latent
        self.encoder = mlp(input_dim, hidden, latent, depth)
        self.decoder = mlp(self.info_bits, hidden, input_dim, depth)

    @property
    def label(self) -> str:
        """A row name for comparison tables."""
        hp = self.hparams
        ecc = f"ECC R={hp.ecc_R} (K={self.info_bits}, N={hp.latent})" if self.code else f"baseline (K=N={hp.latent})"
        return f"{ecc}, hidden {hp.hidden}, depth {hp.depth}"

    def expected_error_rates(self) -> dict[str, float]:
        """The code's repetition factor R (1 without ECC) and, per channel ``flip_eps``, the theoretical
        decoded-bit error rate of majority voting (``latent_ber_theory_eps<eps>``) beside the measured one."""
        R = self.code.R if self.code else 1
        return {"code_R": R, **{f"latent_ber_theory_eps{eps:g}": repetition_error_rate(R, eps)
                                for eps in self.hparams.flip_eps}}

    # -- schedules --------------------------------------------------------------------------------
    @property
    def beta(self) -> float:
        hp = self.hparams
        if not hp.beta_warmup_epochs:
            return hp.beta_max
        return hp.beta_max * min(1.0, self.current_epoch / hp.beta_warmup_epochs)

    @property
    def temperature(self) -> float:
        hp = self.hparams
        return max(hp.temperature_min, hp.temperature * math.exp(-hp.temperature_decay * self.global_step))

    # -- model pieces -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The N code-bit logits of ``q(c | x)``."""
        return self.encoder(x).float()

    def info_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Code-bit logits -> logits of ``q(b | x)`` for the K bits the decoder sees."""
        if self.code is None:
            return logits
        return torch.logit(self.code.majority_prob(torch.sigmoid(logits)), eps=1e-6)

    def to_info(self, code: torch.Tensor) -> torch.Tensor:
        """Code bits -> the decoder's K bits (majority vote, straight-through; identity without ECC)."""
        return self.code.decode_st(code) if self.code else code

    def decode(self, info: torch.Tensor) -> torch.Tensor:
        """K bits -> pixel logits."""
        return self.decoder(info).float()

    def log_likelihood(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        """``log p(x | c)`` summed over pixels; ``code`` may carry extra leading sample dims."""
        logits = self.decode(self.to_info(code))
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)

    @torch.no_grad()
    def sample(self, n: int, eps: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` pixel-probability vectors from the prior: K bits (-> encode -> flip with ``eps`` -> decode)."""
        info = torch.rand(n, self.info_bits, generator=generator).round().to(self.device)
        code = self.code.encode(info) if self.code else info
        return torch.sigmoid(self.decode(self.to_info(self.flip(code, eps, generator))))

    @staticmethod
    def flip(bits: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """A binary symmetric channel: each bit flipped with probability ``eps``."""
        if eps <= 0:
            return bits
        flips = torch.rand(bits.shape, generator=generator).to(bits.device) < eps
        return torch.where(flips, 1 - bits, bits)

    # -- objective --------------------------------------------------------------------------------
    def _losses(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        logits = self(x)
        if self.training:
            code = relaxed_bernoulli(logits, self.temperature)
        else:  # the discrete ELBO: hard Bernoulli samples
            u = torch.rand(logits.shape, generator=generator).to(logits.device)
            code = (u < torch.sigmoid(logits)).float()
        out = {"recon_loss": -self.log_likelihood(x, code).mean(),
               "kl": kl_to_uniform_bernoulli(self.info_logits(logits)).sum(-1).mean()}
        out["neg_elbo"] = out["recon_loss"] + out["kl"]
        if self.training:
            loss = out["recon_loss"] + self.beta * out["kl"]
            if self.code is not None:
                out["consistency"] = self.code.consistency(torch.sigmoid(logits))
                loss = loss + self.hparams.lambda_consistency * out["consistency"]
            out["loss"] = loss
        else:
            out["loss"] = out["neg_elbo"]
        return out

    def iw_nll(self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-weighted bound ``-log (1/S) sum_s p(x, b_s) / q(b_s | x)`` per image (nats), b_s ~ q."""
        logits = self(x)
        u = torch.rand((samples, *logits.shape), generator=generator).to(logits.device)
        code = (u < torch.sigmoid(logits)).float()
        info, info_logits = self.to_info(code), self.info_logits(logits)
        log_q = (info * F.logsigmoid(info_logits) + (1 - info) * F.logsigmoid(-info_logits)).sum(-1)
        log_prior = -self.info_bits * math.log(2.0)
        log_w = self.log_likelihood(x, code) + log_prior - log_q
        return -(torch.logsumexp(log_w, dim=0) - math.log(samples))

    def channel_errors(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Reconstruction error, and bit/word error rates when the posterior-mode bits pass a noisy channel.

        The channel carries the K posterior-mode bits, for ECC as the codeword of their majority vote.
        ``latent_ber``/``latent_wer``: decoded information bits (and images with any such bit) that differ
        from the noise-free ones; ``output_ber``/``output_wer``: the same for the generated pixels (decoder
        mean > 0.5) compared with the noise-free generation.
        """
        info = (self(x) > 0).float()
        if self.code:  # what is sent is the codeword of the decoded bits, as when generating
            info = self.code.decode(info)
        sent = self.code.encode(info) if self.code else info
        clean = self.decode(info) > 0
        out = {"recon_error": (clean.float() != x).float().mean()}
        for eps in self.hparams.flip_eps:
            noisy = self.flip(sent, eps, generator)
            info_noisy = self.code.decode(noisy) if self.code else noisy
            pixels = self.decode(info_noisy) > 0
            wrong_bits, wrong_pixels = info_noisy != info, pixels != clean
            out[f"latent_ber_eps{eps:g}"] = wrong_bits.float().mean()
            out[f"latent_wer_eps{eps:g}"] = wrong_bits.any(-1).float().mean()
            out[f"output_ber_eps{eps:g}"] = wrong_pixels.float().mean()
            out[f"output_wer_eps{eps:g}"] = wrong_pixels.any(-1).float().mean()
        return out

    # -- Lightning --------------------------------------------------------------------------------
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        values = self._losses(batch[0])
        for name, value in values.items():
            self.log(f"train/{name}", value, on_step=name == "loss", on_epoch=True, batch_size=len(batch[0]),
                     prog_bar=name in ("loss", "kl"))
        return values["loss"]

    def on_train_epoch_end(self) -> None:
        # The schedules once per epoch, not per step: a Python number logged in a step is copied to the GPU
        # each time. beta is constant within an epoch; temperature is its value after the epoch's last step.
        self.log("train/beta", self.beta, prog_bar=True)
        self.log("train/temperature", self.temperature)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # Fixed samples per batch, so val/loss (early stopping, checkpointing) is not noisy between epochs.
        values = self._losses(batch[0], torch.Generator().manual_seed(batch_idx))
        for name, value in values.items():
            self.log(f"val/{name}", value, batch_size=len(batch[0]), prog_bar=name == "loss", sync_dist=True)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        x = batch[0]
        generator = torch.Generator().manual_seed(batch_idx)
        values = self._losses(x, generator)
        values["iw_nll"] = self.iw_nll(x, self.hparams.iw_samples, generator).mean()
        values.update(self.channel_errors(x, generator))
        for name, value in values.items():
            self.log(f"test/{name}", value, batch_size=len(x), sync_dist=True)
