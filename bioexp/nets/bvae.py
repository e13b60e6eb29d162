"""Binary-latent VAE parts: MLPs, the binary Concrete relaxation, and the repetition code.

Pure torch. The relaxation is straight-through: the decoder always sees hard 0/1 bits (as at
sampling time), while the gradient flows through the relaxed sigmoid to the encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mlp(in_dim: int, hidden: int, out_dim: int, depth: int) -> nn.Sequential:
    """``depth`` hidden layers of width ``hidden`` (ReLU), then a linear output layer."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, noise: torch.Tensor | None = None,
                      hard: bool = True) -> torch.Tensor:
    """Binary Concrete sample ``sigmoid((logits + log u - log(1-u)) / temperature)``, u ~ U(0, 1).

    With ``hard`` the forward value is the 0/1 bit ``y > 0.5`` and the backward pass is that of the
    relaxed ``y`` (straight-through), so the decoder's input is binary *and* has a gradient.
    ``noise`` (the uniforms u) makes the draw reproducible.
    """
    u = torch.rand_like(logits) if noise is None else noise
    u = u.clamp(1e-6, 1 - 1e-6)
    y = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    if not hard:
        return y
    return (y > 0.5).to(y.dtype) + y - y.detach()


def kl_to_uniform_bernoulli(logits: torch.Tensor) -> torch.Tensor:
    """``KL(Bernoulli(sigmoid(l)) || Bernoulli(0.5))`` per bit: ``q log q + (1-q) log(1-q) + log 2``."""
    q = torch.sigmoid(logits)
    return q * F.logsigmoid(logits) + (1 - q) * F.logsigmoid(-logits) + math.log(2.0)


def repetition_error_rate(R: int, eps: float) -> float:
    """Theoretical decoded-bit error rate of majority voting over R copies, each flipped with probability ``eps``.

    Wrong when more than half the copies flip, or (even R) exactly half do and the first copy, which wins
    ties, is among them (probability 1/2). ``R=1`` (no code) and ``R=2`` both give ``eps``: a majority of
    two corrects nothing.
    """
    wrong = sum(math.comb(R, k) * eps**k * (1 - eps) ** (R - k) for k in range(R // 2 + 1, R + 1))
    if R % 2 == 0:
        wrong += 0.5 * math.comb(R, R // 2) * (eps * (1 - eps)) ** (R // 2)
    return wrong


class RepetitionCode(nn.Module):
    """Repeat each of K information bits R times (code bit ``k*R + r`` is a copy of bit ``k``).

    Majority-vote decoding corrects up to ``(R-1)//2`` flipped copies per bit. A tie (even R,
    half the copies flipped) is resolved deterministically in favour of the first copy, which
    keeps the decoded bit of a uniform codeword uniform (so ``p(b) = Bernoulli(0.5)^K`` holds).
    """

    def __init__(self, R: int) -> None:
        super().__init__()
        if R < 1:
            raise ValueError(f"repetition factor must be >= 1, got {R}")
        self.R = R

    def info_bits(self, n: int) -> int:
        return n // self.R

    def encode(self, bits: torch.Tensor) -> torch.Tensor:
        """``[..., K] -> [..., K*R]``."""
        return bits.repeat_interleave(self.R, dim=-1)

    def copies(self, code: torch.Tensor) -> torch.Tensor:
        """``[..., K*R] -> [..., K, R]``."""
        return code.unflatten(-1, (code.shape[-1] // self.R, self.R))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """Hard majority vote ``[..., K*R] -> [..., K]`` (values 0/1, ties go to the first copy)."""
        copies = self.copies(code)
        votes = copies.sum(-1)
        majority = (2 * votes > self.R).to(code.dtype)
        tie = 2 * votes == self.R
        return torch.where(tie, copies[..., 0], majority)

    def decode_st(self, code: torch.Tensor) -> torch.Tensor:
        """Majority vote forward; gradient of the copies' mean backward (straight-through)."""
        soft = self.copies(code).mean(-1)
        return self.decode(code.detach()) + soft - soft.detach()

    def majority_prob(self, probs: torch.Tensor) -> torch.Tensor:
        """``P(decode(c) = 1)`` for independent copies ``c_r ~ Bernoulli(p_r)``: ``[..., K*R] -> [..., K]``.

        The first copy wins ties, so ``P = p_1 P(2(S+1) >= R) + (1 - p_1) P(2S > R)`` with S the number
        of ones among the other copies (its distribution by dynamic programming over the copies).
        """
        copies = self.copies(probs)
        count = torch.ones_like(copies[..., :1])  # distribution of S over 0..r ones so far
        for r in range(1, self.R):
            p = copies[..., r:r + 1]
            count = F.pad(count * (1 - p), (0, 1)) + F.pad(count * p, (1, 0))
        ones = torch.arange(self.R, device=probs.device)
        first = copies[..., 0]
        wins_with_first, wins_without = count[..., 2 * (ones + 1) >= self.R], count[..., 2 * ones > self.R]
        return first * wins_with_first.sum(-1) + (1 - first) * wins_without.sum(-1)

    def consistency(self, probs: torch.Tensor) -> torch.Tensor:
        """Mean squared spread of each bit's R copy probabilities around their mean (0 when they agree)."""
        copies = self.copies(probs)
        return (copies - copies.mean(-1, keepdim=True)).pow(2).mean()
