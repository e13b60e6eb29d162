"""Channel inflation: load weights pretrained on some channels into a model with more (or reordered) channels.

A tensor whose size along a dimension is ``n_channels * k`` in both models (with the same ``k``) is tied
to channels along that dimension, in blocks of ``k`` (the MSM decoder's rows, TTM's channel-mixing layers).
Blocks of channels the pretrained model knew are copied from that channel; new channels start from the
mean of the pretrained channels' blocks plus N(0, ``noise_std``) noise; tensors of equal shape (weights
shared by all channels) are copied as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from bioexp.errors import BioexpError


def _inflate_dim(old: torch.Tensor, dim: int, old_channels: Sequence[str], new_channels: Sequence[str],
                 noise_std: float, generator: torch.Generator) -> torch.Tensor:
    k = old.shape[dim] // len(old_channels)
    blocks = old.split(k, dim=dim)
    mean = torch.stack(blocks).mean(dim=0)
    out = []
    for name in new_channels:
        if name in old_channels:
            out.append(blocks[list(old_channels).index(name)])
        else:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32) * noise_std
            out.append(mean + noise.to(mean.dtype))
    return torch.cat(out, dim=dim)


def inflate_state_dict(pretrained: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       old_channels: Sequence[str], new_channels: Sequence[str], noise_std: float = 0.01,
                       seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict shaped like ``target`` filled from ``pretrained`` (see the module docstring).

    Keys of ``target`` missing from ``pretrained`` and shapes that do not follow the channel counts are
    errors, since the two models would then not be the same architecture.
    """
    generator = torch.Generator().manual_seed(seed)
    n_old, n_new = len(old_channels), len(new_channels)
    missing = [k for k in target if k not in pretrained]
    if missing:
        raise BioexpError(f"pretrained weights lack {missing[:3]}{' ...' if len(missing) > 3 else ''}: "
                          "not the same encoder architecture")
    if n_old == n_new and list(old_channels) != list(new_channels):
        raise BioexpError(f"channels {list(old_channels)} -> {list(new_channels)}: with equal counts, channel-tied "
                          "weights cannot be told from shared ones; keep the pretrained channels' order")
    out = {}
    for key, want in target.items():
        tensor = pretrained[key].detach().clone()
        if tensor.dim() != want.dim():
            raise BioexpError(f"{key}: pretrained shape {list(tensor.shape)} cannot become {list(want.shape)}")
        for dim, (have, need) in enumerate(zip(tensor.shape, want.shape, strict=True)):
            if have == need:
                continue
            if have % n_old or need % n_new or have // n_old != need // n_new:
                raise BioexpError(f"{key}: size {have} along dim {dim} is not {n_old} channels x k "
                                  f"(wanted {need} = {n_new} x k); the encoder configs differ")
            tensor = _inflate_dim(tensor, dim, old_channels, new_channels, noise_std, generator)
        out[key] = tensor
    return out


def load_pretrained(path: str | Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``prefix``-ed weights of a Lightning checkpoint (prefix stripped) and its hyperparameters; a checkpoint
    in the guide's layout (``encoder_state_dict``, ``config``) gives those instead."""
    path = Path(path)
    if not path.is_file():
        raise BioexpError(f"pretrained checkpoint {path} not found; pretrain with "
                          "`python -m bioexp.train experiment=vitaldb_msm` and pass its checkpoints/last.ckpt")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if "encoder_state_dict" in checkpoint:
        return dict(checkpoint["encoder_state_dict"]), dict(checkpoint.get("config") or {})
    state = {k.removeprefix(prefix): v for k, v in checkpoint.get("state_dict", {}).items() if k.startswith(prefix)}
    if not state:
        raise BioexpError(f"{path} holds no '{prefix}*' weights; is it a masked-signal-modeling checkpoint?")
    return state, dict(checkpoint.get("hyper_parameters", {}))
