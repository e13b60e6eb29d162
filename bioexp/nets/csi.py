"""CSI-Predictor network: an image backbone, dropout, and one 5-class head per lung zone.

Backbones: ``resnet50`` (torchvision), ``chexnet`` (torchvision DenseNet121; a CheXNet checkpoint
loads from a local path), ``raddino`` (a DINOv2 ViT-B/14 built from its transformers config;
weights from a local directory) and ``custom_1`` (a 5-layer CNN). Pretrained weights are only ever
read from local files unless ``download`` is asked for: ``pretrained=true`` without them is a
:class:`~bioexp.errors.WeightsNotFoundError` that names the ways out; ``pretrained=auto`` uses them
when present and otherwise trains from scratch, saying so in one warning line.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bioexp.errors import BioexpError, WeightsNotFoundError

log = logging.getLogger(__name__)

BACKBONES = ("resnet50", "chexnet", "raddino", "custom_1")
Pretrained = bool | str  # true | false | "auto"
DATA_KEYS = ("input_size", "normalize")  # backbone settings the data reads (resize, normalisation)
RADDINO_REPO = "microsoft/rad-dino"


class Custom1(nn.Module):
    """Five stride-2 conv + BN + ReLU layers, max-pool after the first two, global average pool.

    Its features are the last width (1024 by default; the published code mis-declared 512).
    """

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (64, 128, 256, 512, 1024),
                 kernels: Sequence[int] = (7, 5, 3, 3, 3)) -> None:
        super().__init__()
        if len(widths) != len(kernels):
            raise BioexpError(f"custom_1 needs as many widths as kernels, got {list(widths)} and {list(kernels)}")
        layers: list[nn.Module] = []
        for i, (width, kernel) in enumerate(zip(widths, kernels, strict=True)):
            layers += [nn.Conv2d(in_channels, width, kernel, stride=2, padding=kernel // 2, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            in_channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.out_features = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _missing(name: str, what: str, download: bool | None) -> WeightsNotFoundError:
    fetch = " or set model.backbone.download=true where the network is reachable" if download is not None else ""
    return WeightsNotFoundError(
        f"{name}: model.backbone.pretrained=true but no local weights; set model.backbone.weights_path="
        f"<{what}>{fetch}, or train from scratch with model.backbone.pretrained=false")


def _absent(name: str, what: str, pretrained: Pretrained, download: bool | None) -> None:
    """No local weights: ``auto`` goes on from scratch with one warning; ``true`` is an error naming the ways out."""
    if pretrained != "auto":
        raise _missing(name, what, download)
    log.warning("%s: no local pretrained weights, training from scratch (model.backbone.pretrained=auto); set "
                "model.backbone.weights_path=<%s>, or pretrained=true to make this an error", name, what)


def _state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"backbone weights not found: {path} (model.backbone.weights_path)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    return {re.sub(r"^(module\.)?", "", k): v for k, v in state.items()}


def _load(net: nn.Module, state: dict[str, torch.Tensor], head: str, path: Any) -> None:
    """Load backbone weights; the checkpoint's own classifier (``head``) is dropped."""
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(head)]
    if missing or result.unexpected_keys:
        raise BioexpError(f"{path} does not fit this backbone: missing {missing[:3]}, "
                          f"unexpected {result.unexpected_keys[:3]}")


def resnet50(pretrained: Pretrained = False, weights_path: str | None = None,
             download: bool = False) -> tuple[nn.Module, int]:
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as build

    net = build(weights=None)
    features = net.fc.in_features
    if weights_path:
        _load(net, _state_dict(weights_path), "fc.", weights_path)
    elif pretrained:
        weights = ResNet50_Weights.IMAGENET1K_V2
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        if cached.is_file():
            _load(net, _state_dict(cached), "fc.", cached)
        elif download:
            net.load_state_dict(weights.get_state_dict(progress=False))
        else:
            _absent("resnet50", f"a torchvision resnet50 .pth, e.g. {cached}", pretrained, download)
    net.fc = nn.Identity()
    return net, features


def chexnet(pretrained: Pretrained = False, weights_path: str | None = None) -> tuple[nn.Module, int]:
    """DenseNet121; ``weights_path`` may be a CheXNet checkpoint (``module.densenet121.*``, old ``norm.1`` names)."""
    from torchvision.models import densenet121

    net = densenet121(weights=None)
    features = net.classifier.in_features
    if weights_path:
        state = {re.sub(r"^densenet121\.", "", k): v for k, v in _state_dict(weights_path).items()}
        state = {re.sub(r"\.(norm|relu|conv)\.(\d)", r".\1\2", k): v for k, v in state.items()}
        _load(net, state, "classifier", weights_path)
    elif pretrained:
        _absent("chexnet", "a CheXNet checkpoint such as model.pth.tar", pretrained, None)
    net.classifier = nn.Identity()
    return net, features


class RadDINO(nn.Module):
    """DINOv2 encoder (transformers); features = its pooled (layer-normed) CLS token."""

    def __init__(self, config: dict[str, Any], pretrained: Pretrained = False, weights_path: str | None = None,
                 download: bool = False) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model  # lazy: transformers costs seconds to import

        if weights_path:
            if not (Path(weights_path) / "config.json").is_file():
                raise WeightsNotFoundError(f"raddino: {weights_path} is not a local copy of {RADDINO_REPO} "
                                           "(a directory with config.json and model.safetensors)")
            self.encoder = Dinov2Model.from_pretrained(weights_path, local_files_only=True)
        elif pretrained and download:
            self.encoder = Dinov2Model.from_pretrained(RADDINO_REPO)
        else:
            if pretrained:
                _absent("raddino", f"a directory holding {RADDINO_REPO} (config.json, model.safetensors)",
                        pretrained, download)
            self.encoder = Dinov2Model(Dinov2Config(**config))
        self.out_features = self.encoder.config.hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(pixel_values=x).pooler_output


def build_backbone(name: str, pretrained: Pretrained = False, weights_path: str | None = None, download: bool = False,
                   **options: Any) -> tuple[nn.Module, int]:
    """``(module mapping [B, 3, H, W] to [B, F], F)`` for a backbone name and its options."""
    if pretrained not in (True, False, "auto"):
        raise BioexpError(f"model.backbone.pretrained must be true, false or auto, got {pretrained!r}")
    if name == "resnet50":
        return resnet50(pretrained, weights_path, download)
    if name == "chexnet":
        return chexnet(pretrained, weights_path)
    if name == "raddino":
        net = RadDINO(options.get("config", {}), pretrained, weights_path, download)
        return net, net.out_features
    if name == "custom_1":
        if pretrained is True or weights_path:  # auto: there are none to find
            raise BioexpError("custom_1 has no pretrained weights; set model.backbone.pretrained=false")
        net = Custom1(**options)
        return net, net.out_features
    raise BioexpError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


class CSINet(nn.Module):
    """Backbone → dropout → six parallel ``Linear(features, 5)``: logits ``[B, 6, 5]``."""

    def __init__(self, backbone: dict[str, Any], dropout: float = 0.5, num_zones: int = 6,
                 num_classes: int = 5) -> None:
        super().__init__()
        spec = {k: v for k, v in backbone.items() if k not in DATA_KEYS}
        self.backbone, features = build_backbone(**spec)
        self.dropout = nn.Dropout(dropout)
        self.heads = nn.ModuleList(nn.Linear(features, num_classes) for _ in range(num_zones))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.dropout(self.backbone(x))
        return torch.stack([head(z) for head in self.heads], dim=1)
