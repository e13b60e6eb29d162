"""EP-Prior: a structured, interpretable self-supervised ECG model and its capacity-matched baseline.

The structured encoder pools the XResNet feature map once per wave (P, QRS, T: learned attention) and
once for rhythm (HRV: mean pooling), so each latent can specialise on one part of the beat. The decoder
is an electrophysiological prior: it can only draw a beat as gated sums of Gaussians whose centres and
widths are explicit, so the latents must encode wave timing, width and per-lead amplitude, and the
timing can be constrained (``bioexp.losses.ep_constraint_loss``) and plotted wave by wave.

The baseline (``MeanPoolEncoder`` + ``MLPDecoder``) has the same backbone, head shape, latent size
(256) and call signatures, so a task can swap one pair for the other and compare like with like.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bioexp.nets.xresnet1d import XResNet1d

WAVES = ("P", "QRS", "T")
DEFAULT_LATENT_DIMS = {"P": 32, "QRS": 128, "T": 64, "HRV": 32}
# Initial wave centres and widths (fractions of the window) for a beat-centred 1-s window, R peak at 0.35:
# P ~150 ms before R, T ~300 ms after R; sigmas of 12/8/30 ms give P, QRS and T waves of typical duration.
INIT_TAU = {"P": 0.20, "QRS": 0.35, "T": 0.65}
INIT_SIGMA = {"P": 0.012, "QRS": 0.008, "T": 0.03}
# Scale of the decoder's last-layer weights relative to PyTorch's default init: the latents start by
# nudging the wave parameters (|delta tau| ~ 0.01) instead of scattering waves across the window.
PARAM_WEIGHT_SCALE = 0.1


def _head(in_dim: int, out_dim: int, dropout: float) -> nn.Sequential:
    """Projection head shared by the structured and baseline encoders (same shape = fair comparison)."""
    return nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(in_dim, out_dim))


def resolve_latent_dims(latent_dims: Mapping[str, int] | None = None, d_latent: int | None = None) -> dict[str, int]:
    """Latent sizes: defaults, overridden per wave by ``latent_dims``, or all at once by ``d_latent``.

    ``d_latent`` wins over ``latent_dims`` so that one override (the training script's ``--d_latent``)
    resizes everything even when a config also spells out the per-wave sizes.
    """
    unknown = set(latent_dims or {}) - set(DEFAULT_LATENT_DIMS)
    if unknown:
        raise ValueError(f"unknown latents {sorted(unknown)}; expected a subset of {list(DEFAULT_LATENT_DIMS)}")
    if d_latent is not None:
        return dict.fromkeys(DEFAULT_LATENT_DIMS, int(d_latent))
    return {**DEFAULT_LATENT_DIMS, **{k: int(v) for k, v in (latent_dims or {}).items()}}


class AttentionPool1d(nn.Module):
    """Softmax-over-time attention pooling; zero-initialised so it starts as mean pooling.

    Starting from the mean lets every wave latent see the whole beat first; the attention maps then
    only sharpen where that helps reconstruction, which makes them readable as "where is this wave".
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Conv1d(dim, 1, 1)
        nn.init.zeros_(self.score.weight)
        nn.init.zeros_(self.score.bias)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, dim, L]`` -> pooled ``[B, dim]`` and attention weights ``[B, L]`` (rows sum to 1)."""
        weights = torch.softmax(self.score(features).squeeze(1).float(), dim=-1)  # float32 maps, also under autocast
        return torch.einsum("bdl,bl->bd", features, weights.to(features.dtype)), weights


class StructuredEncoder(nn.Module):
    """XResNet backbone with one attention-pooled latent per wave (P, QRS, T) and a mean-pooled HRV latent.

    ``backbone_kwargs`` go to ``XResNet1d`` (e.g. ``stem_widths``/``block_widths`` for tiny test nets).
    """

    def __init__(self, arch: str = "xresnet1d50", in_channels: int = 12, latent_dims: Mapping[str, int] | None = None,
                 d_latent: int | None = None, dropout: float = 0.1, **backbone_kwargs: Any) -> None:
        super().__init__()
        self.latent_dims = resolve_latent_dims(latent_dims, d_latent)
        self.backbone = XResNet1d(arch, in_channels, num_classes=None, **backbone_kwargs)
        dim = self.backbone.out_channels
        self.pools = nn.ModuleDict({wave: AttentionPool1d(dim) for wave in WAVES})
        self.heads = nn.ModuleDict({name: _head(dim, size, dropout) for name, size in self.latent_dims.items()})

    @property
    def latent_dim(self) -> int:
        return sum(self.latent_dims.values())

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``[B, C, T]`` -> latents ``{P, QRS, T, HRV: [B, d]}`` and attention maps ``{P, QRS, T: [B, L]}``."""
        features = self.backbone(x)
        pooled: dict[str, torch.Tensor] = {}
        attention: dict[str, torch.Tensor] = {}
        for wave in WAVES:
            pooled[wave], attention[wave] = self.pools[wave](features)
        pooled["HRV"] = features.mean(dim=-1)
        return {name: self.heads[name](pooled[name]) for name in self.latent_dims}, attention


class _SeparateHeads(nn.Module):
    """One Linear-ReLU-Linear MLP per parameter group (tau, sigma, gate, amplitudes), outputs concatenated.

    The published decoder's layout: the groups share no hidden layer, so e.g. the timing head cannot be
    pulled around by what the amplitude head needs.
    """

    def __init__(self, in_dim: int, hidden: int, sizes: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                                 nn.Linear(hidden, size)) for size in sizes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([head(z) for head in self.heads], dim=-1)

    def last_layers(self) -> list[nn.Linear]:
        return [head[-1] for head in self.heads]


class GaussianWaveDecoder(nn.Module):
    """Draws each lead as ``output_scale * sum_w gate_w * sum_k A_wk * N(t; tau_w + offset_k, sigma_w)``.

    Per wave, parameter MLPs map its latent to: centre ``tau = sigmoid(.)`` (fraction of the window),
    width ``sigma = softplus(.) + sigma_min`` shared by the wave's components, presence
    ``gate = gate_min + (1 - gate_min) * sigmoid(.)`` (a wave may fade, never vanish, so its timing stays
    learnable) and one amplitude per lead and component (QRS has three: Q, R, S at ``qrs_offsets``).
    ``heads="separate"`` (published) gives tau, sigma, gate and the amplitudes an MLP each;
    ``heads="shared"`` one MLP per wave with one hidden layer for all of them.

    Initialisation: last-layer biases put tau, sigma and gate at ``init_tau``/``init_sigma``/``init_gate``
    (window fractions; default ``INIT_TAU``/``INIT_SIGMA`` and a gate halfway between ``gate_min`` and 1:
    a beat-centred 1-s window with the R peak at 0.35); last-layer weights are scaled by ``param_weight_scale``. With
    ``init_amplitude_bias_zero`` the amplitude biases start at 0 (with scale 0.1: amplitudes ~0.02 and
    ``x_hat`` peaks ~0.1-0.7 after ``output_scale`` 15); otherwise they keep PyTorch's default init, as
    the published decoder does.
    Everything runs in float32 (autocast off): with sigma ~0.01 of the window, half precision would
    quantise the wave centres at the scale of the waves themselves.
    """

    def __init__(self, latent_dims: Mapping[str, int] | None = None, n_leads: int = 12, hidden: int = 256,
                 gate_min: float = 0.1, sigma_min: float = 0.005, output_scale_init: float = 15.0,
                 qrs_offsets: Sequence[float] = (-0.015, 0.0, 0.015), heads: str = "shared",
                 init_tau: Mapping[str, float] | None = None, init_sigma: Mapping[str, float] | None = None,
                 init_gate: Mapping[str, float] | None = None, param_weight_scale: float = PARAM_WEIGHT_SCALE,
                 init_amplitude_bias_zero: bool = True) -> None:
        super().__init__()
        dims = resolve_latent_dims(latent_dims)
        if heads not in ("shared", "separate"):
            raise ValueError(f"unknown decoder heads {heads!r}; choose shared or separate")
        tau0 = {**INIT_TAU, **(init_tau or {})}
        sigma0 = {**INIT_SIGMA, **(init_sigma or {})}
        gate0 = dict(init_gate) if init_gate else dict.fromkeys(WAVES, gate_min + (1 - gate_min) / 2)  # bias 0
        if not all(sigma0[wave] > sigma_min for wave in WAVES):
            raise ValueError(f"sigma_min={sigma_min} must be below the initial widths {sigma0}")
        if not all(0 < tau0[w] < 1 and gate_min < gate0[w] < 1 for w in WAVES):
            raise ValueError(f"initial centres must lie in (0, 1) and gates in (gate_min, 1): {tau0}, {gate0}")
        self.n_leads, self.gate_min, self.sigma_min = n_leads, gate_min, sigma_min
        self.offsets = {"P": (0.0,), "QRS": tuple(float(o) for o in qrs_offsets), "T": (0.0,)}
        self.output_scale = nn.Parameter(torch.tensor(float(output_scale_init)))
        for wave, offsets in self.offsets.items():  # on the net's device: no host-to-device copy per step
            self.register_buffer(f"offsets_{wave}", torch.tensor(offsets), persistent=False)
        self.mlps = nn.ModuleDict()
        for wave in WAVES:
            n_amp = n_leads * len(self.offsets[wave])
            biases = (math.log(tau0[wave] / (1 - tau0[wave])),  # logit
                      math.log(math.expm1(sigma0[wave] - sigma_min)),  # softplus inverse
                      math.log((gate0[wave] - gate_min) / (1 - gate0[wave])))  # logit of the gate's sigmoid
            if heads == "separate":
                mlp = _SeparateHeads(dims[wave], hidden, (1, 1, 1, n_amp))
                lasts = mlp.last_layers()
            else:
                last = nn.Linear(hidden, 3 + n_amp)  # built first: same weights for a seed as before
                mlp = nn.Sequential(nn.Linear(dims[wave], hidden), nn.ReLU(inplace=True), last)
                lasts = [last]
            with torch.no_grad():
                for last in lasts:
                    last.weight.mul_(param_weight_scale)
                bias = torch.cat([last.bias for last in lasts])  # [tau, sigma, gate, amplitudes...]
                bias[:3] = torch.tensor(biases)
                if init_amplitude_bias_zero:
                    bias[3:] = 0.0
                for last, part in zip(lasts, bias.split([len(last.bias) for last in lasts]), strict=True):
                    last.bias.copy_(part)
            self.mlps[wave] = mlp

    def wave_params(self, z: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Latents -> ``{wave: {tau, sigma, gate: [B], amplitude: [B, n_leads, K], centres: [B, K]}}``."""
        params = {}
        with torch.autocast(device_type=z["P"].device.type, enabled=False):
            for wave in WAVES:
                out = self.mlps[wave](z[wave].float())
                tau = torch.sigmoid(out[:, 0])
                offsets = getattr(self, f"offsets_{wave}").to(tau.dtype)
                params[wave] = {
                    "tau": tau,
                    "sigma": F.softplus(out[:, 1]) + self.sigma_min,
                    "gate": self.gate_min + (1 - self.gate_min) * torch.sigmoid(out[:, 2]),
                    "amplitude": out[:, 3:].reshape(-1, self.n_leads, len(offsets)),
                    "centres": tau[:, None] + offsets,
                }
        return params

    def render(self, params: Mapping[str, Mapping[str, torch.Tensor]], length: int) -> dict[str, torch.Tensor]:
        """Each wave's contribution ``[B, n_leads, length]`` (scaled, gated) on ``t = linspace(0, 1, length)``."""
        device = params["P"]["tau"].device
        t = torch.linspace(0, 1, length, device=device, dtype=torch.float32)
        components = {}
        with torch.autocast(device_type=device.type, enabled=False):
            for wave in WAVES:
                p = {k: v.float() for k, v in params[wave].items()}
                bumps = torch.exp(-0.5 * ((t - p["centres"][..., None]) / p["sigma"][:, None, None]) ** 2)  # [B, K, T]
                wave_sum = torch.einsum("bnk,bkt->bnt", p["amplitude"], bumps)
                components[wave] = self.output_scale.float() * p["gate"][:, None, None] * wave_sum
        return components

    def components(self, z: Mapping[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
        """P, QRS and T drawn separately (they sum to ``forward``'s ``x_hat``), for figures."""
        return self.render(self.wave_params(z), length)

    def forward(self, z: Mapping[str, torch.Tensor], length: int) -> tuple[torch.Tensor, dict]:
        """Latents -> reconstruction ``[B, n_leads, length]`` and the wave parameters (for EP constraints)."""
        params = self.wave_params(z)
        return torch.stack(list(self.render(params, length).values())).sum(0), params


class MeanPoolEncoder(nn.Module):
    """Baseline encoder: same backbone and head shape, one mean-pooled latent, same return structure."""

    def __init__(self, arch: str = "xresnet1d50", in_channels: int = 12, latent_dim: int = 256, dropout: float = 0.1,
                 **backbone_kwargs: Any) -> None:
        super().__init__()
        self.backbone = XResNet1d(arch, in_channels, num_classes=None, **backbone_kwargs)
        self.head = _head(self.backbone.out_channels, latent_dim, dropout)
        self._latent_dim = latent_dim

    @property
    def latent_dim(self) -> int:
        return self._latent_dim

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``[B, C, T]`` -> ``({"z": [B, latent_dim]}, {})`` (no attention maps)."""
        return {"z": self.head(self.backbone(x).mean(dim=-1))}, {}


class MLPDecoder(nn.Module):
    """Baseline decoder: an unconstrained MLP to ``[B, n_leads, base_length]``, upsampled to ``length``.

    Takes the latent dict of either encoder (values concatenated in insertion order). The transposed
    convolution for ``length > base_length`` starts as nearest-neighbour upsampling (each lead copies
    itself ``s`` times) so the MLP's coarse beat is a sensible full-rate output from the first step.
    """

    def __init__(self, latent_dim: int = 256, n_leads: int = 12, base_length: int = 100,
                 hidden: Sequence[int] = (512, 512, 512), length: int = 100) -> None:
        super().__init__()
        if length % base_length:
            raise ValueError(f"length={length} must be a multiple of base_length={base_length}")
        self.latent_dim, self.n_leads, self.base_length, self.length = latent_dim, n_leads, base_length, length
        sizes = [latent_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*layers, nn.Linear(sizes[-1], n_leads * base_length))
        stride = length // base_length
        self.upsample: nn.ConvTranspose1d | None = None
        if stride > 1:
            self.upsample = nn.ConvTranspose1d(n_leads, n_leads, kernel_size=stride, stride=stride)
            with torch.no_grad():
                self.upsample.weight.zero_()
                self.upsample.weight[range(n_leads), range(n_leads), :] = 1.0
                self.upsample.bias.zero_()

    def forward(self, z: Mapping[str, torch.Tensor], length: int) -> tuple[torch.Tensor, dict]:
        """Latent dict -> ``([B, n_leads, length], {})``; ``length`` must be the constructed one."""
        if length != self.length:
            raise ValueError(f"MLPDecoder was built for length={self.length}, got length={length}")
        latent = torch.cat(list(z.values()), dim=-1)
        if latent.shape[-1] != self.latent_dim:
            raise ValueError(f"latents have {latent.shape[-1]} features in total, decoder expects {self.latent_dim}")
        x_hat = self.mlp(latent).reshape(-1, self.n_leads, self.base_length)
        return (x_hat if self.upsample is None else self.upsample(x_hat)), {}


class ProjectionHead(nn.Module):
    """SimCLR projection (Linear-ReLU-Linear): the contrastive loss acts here, not on the latents themselves."""

    def __init__(self, in_dim: int = 256, hidden: int = 256, out_dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
