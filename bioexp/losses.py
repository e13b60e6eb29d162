"""Self-supervised losses: SimCLR's NT-Xent, EP-Prior's electrophysiology constraints, multi-resolution STFT."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from bioexp.errors import BioexpError

DEFAULT_SIGMA_BOUNDS: dict[str, tuple[float, float]] = {"P": (0.003, 0.025), "QRS": (0.002, 0.020),
                                                         "T": (0.005, 0.040)}


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR NT-Xent over the 2B views ``[z1; z2]``: view i's positive is its pair, all other views negatives.

    Written as a cross-entropy over cosine-similarity logits in float32 with autocast off, the diagonal
    masked by a finite very negative value: ``cross_entropy``'s log-sum-exp never exponentiates raw
    logits, so it stays finite at tiny temperatures, for identical or zero vectors and for half-precision
    inputs (a hand-written exp/log version produced the NaNs). Zero vectors normalise to zero (eps).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [B, D] tensors of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    batch = z1.shape[0]
    with torch.autocast(device_type=z1.device.type, enabled=False):
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1, eps=1e-8)
        logits = z @ z.T / temperature
        self_mask = torch.eye(2 * batch, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, torch.finfo(logits.dtype).min)
        targets = torch.arange(2 * batch, device=z.device).roll(batch)  # i <-> i + B
        return F.cross_entropy(logits, targets)


def _hinge(violation: torch.Tensor, sharpness: float) -> torch.Tensor:
    """Smooth ReLU: ~0 when satisfied by a margin >> 1/sharpness, ~violation when violated."""
    return F.softplus(sharpness * violation) / sharpness


def ep_constraint_loss(params: Mapping[str, Mapping[str, torch.Tensor]], pr_min: float = 0.04, qt_min: float = 0.08,
                       sigma_bounds: Mapping[str, tuple[float, float]] | None = None, sharpness: float = 100.0,
                       detach_gates: bool = True, order_gate: str = "pairs",
                       relative_sigma_sharpness: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Soft electrophysiology constraints on ``GaussianWaveDecoder`` params; returns total and named terms.

    Terms (window fractions, batch means): ``order`` (P before QRS before T), ``pr`` (QRS - P >= pr_min),
    ``qt`` (T - QRS >= qt_min) and ``sigma`` (each wave's width within its bounds), each a softplus hinge
    ``softplus(sharpness * violation) / sharpness`` weighted by the gates of the waves involved, so a faded
    wave's placement matters less.

    The published loss is ``sharpness=1``, ``detach_gates=False``, ``order_gate="all"`` (the order term
    weighted by all three gates) and ``relative_sigma_sharpness=False``. The defaults are the beat-window
    variant's: gates enter as constants (otherwise the cheapest way to satisfy the constraints is to shrink
    the gates and grow the amplitudes, leaving the reconstruction unchanged and the constraints void),
    ``order`` is weighted per pair (P-QRS, QRS-T), and the hinge is sharp (100), with sigma terms sharpened
    relative to the bound they test (``sharpness / bound``): a width 10 % inside its bound costs ~0 while
    a violation costs ~its size (with ``sharpness=1`` every term keeps a floor of ~log 2 times its gates).
    """
    if order_gate not in ("pairs", "all"):
        raise ValueError(f"unknown order_gate {order_gate!r}; choose pairs or all")
    bounds = {**DEFAULT_SIGMA_BOUNDS, **(sigma_bounds or {})}
    tau = {wave: p["tau"] for wave, p in params.items()}
    gate = {wave: p["gate"].detach() if detach_gates else p["gate"] for wave, p in params.items()}
    g_pq, g_qt = gate["P"] * gate["QRS"], gate["QRS"] * gate["T"]
    p_qrs, qrs_t = _hinge(tau["P"] - tau["QRS"], sharpness), _hinge(tau["QRS"] - tau["T"], sharpness)
    order = (g_pq * p_qrs + g_qt * qrs_t) if order_gate == "pairs" else g_pq * gate["T"] * (p_qrs + qrs_t)
    terms = {
        "order": order.mean(),
        "pr": (g_pq * _hinge(pr_min - (tau["QRS"] - tau["P"]), sharpness)).mean(),
        "qt": (g_qt * _hinge(qt_min - (tau["T"] - tau["QRS"]), sharpness)).mean(),
    }
    sigma_terms = []
    for wave, (lo, hi) in bounds.items():
        sigma = params[wave]["sigma"]
        lo_sharp, hi_sharp = (sharpness / lo, sharpness / hi) if relative_sigma_sharpness else (sharpness, sharpness)
        penalty = _hinge(lo - sigma, lo_sharp) + _hinge(sigma - hi, hi_sharp)
        sigma_terms.append((gate[wave] * penalty).mean())
    terms["sigma"] = torch.stack(sigma_terms).sum()
    return torch.stack(list(terms.values())).sum(), terms


def stft_magnitude(x: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """``|STFT|`` ``[N, freq, frames]`` of ``x [..., L]`` (flattened to ``N`` signals), periodic Hann window.

    Frames are centred with reflect padding of ``n_fft // 2`` on both sides (torch's default), so an FFT
    longer than the signal still works (2048 on a 1250-sample window: 3 frames) as long as the padding is
    shorter than the signal; a shorter signal cannot be reflected and is refused with a clear message.
    """
    length = x.shape[-1]
    if n_fft // 2 >= length:
        raise BioexpError(f"window of {length} samples is too short for an FFT size of {n_fft} (reflect padding "
                          f"needs more than {n_fft // 2} samples); use smaller FFT sizes or longer windows")
    window = torch.hann_window(n_fft, device=x.device, dtype=torch.float32)
    return torch.stft(x.reshape(-1, length).float(), n_fft, hop_length=hop, window=window, center=True,
                      pad_mode="reflect", return_complex=True).abs()


def multi_resolution_stft_loss(x_hat: torch.Tensor, x: torch.Tensor, fft_sizes: Sequence[int] = (512, 1024, 2048),
                               hop_sizes: Sequence[int] = (128, 256, 512), floor_db: float | None = 60.0,
                               eps: float = 1e-5) -> torch.Tensor:
    """Mean over resolutions of the L1 distance between log-magnitude spectrograms (Parallel WaveGAN style).

    Magnitudes are floored at ``floor_db`` below the peak of each target spectrogram (and at ``eps``):
    band-limited biosignals have bins with almost no energy, and the log of those (down to ``log eps``)
    would otherwise dominate the loss and its gradient (it kept masked signal modeling from learning at
    all). ``floor_db=None`` keeps only the absolute ``eps``. Computed in float32 with autocast off
    (half-precision STFTs lose the small magnitudes the log amplifies).
    """
    if len(fft_sizes) != len(hop_sizes) or not fft_sizes:
        raise BioexpError(f"need one hop size per FFT size, got {list(fft_sizes)} and {list(hop_sizes)}")
    losses = []
    with torch.autocast(device_type=x.device.type, enabled=False):
        for n_fft, hop in zip(fft_sizes, hop_sizes, strict=True):
            target, estimate = stft_magnitude(x, n_fft, hop), stft_magnitude(x_hat, n_fft, hop)
            floor = torch.full_like(target[:, :1, :1], eps)
            if floor_db is not None:
                floor = floor.maximum(target.amax(dim=(1, 2), keepdim=True) * 10 ** (-floor_db / 20))
            losses.append(F.l1_loss(estimate.maximum(floor).log(), target.maximum(floor).log()))
    return torch.stack(losses).mean()
