"""Cardiac Dreamer: a latent world model of the echo probe that predicts where the target view is.

An image backbone (ResNet with a 1-channel stem) maps frame t1 to a 512 x h x w feature map; it is cut
into tokens (``channel``: 512 tokens of the h*w map values; ``spatial``: h*w tokens of 512 channels),
an action token encodes the probe's move, and a transformer predicts the features of frame t2. A
guidance head reads the predicted features and outputs the action from t2 to the target view.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from bioexp.errors import DataNotFoundError

log = logging.getLogger(__name__)

FEATURES = 512  # channels of resnet18/34's last stage
TOKEN_TYPES = ("channel", "spatial")


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """``(length, d_model)`` fixed sine/cosine position codes (Vaswani et al., 2017)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: d_model // 2])
    return table


def imagenet_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's ImageNet weights of ``arch`` (the published system's starting point)."""
    return torchvision.models.get_model_weights(arch).IMAGENET1K_V1


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision keeps ``arch``'s ImageNet weights once downloaded: ``$TORCH_HOME/hub/checkpoints/``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(imagenet_weights(arch).url).path).name


def backbone_state(arch: str, pretrained: str | None, download: bool) -> dict[str, torch.Tensor] | None:
    """The RGB state dict to start ``arch`` from, or None to train from scratch.

    ``pretrained``: ``imagenet`` (torchvision's local cache, used when present; downloaded only when
    ``download``; absent: one WARNING and training from scratch), a path to a local state dict, or None.
    """
    if not pretrained:
        return None
    if pretrained != "imagenet":
        path = Path(pretrained)
        if not path.is_file():
            raise DataNotFoundError(f"pretrained backbone weights {path} not found; give a local torchvision "
                                    f"{arch} state dict, model.net.pretrained=imagenet or null")
        log.info("Backbone %s starts from %s", arch, path)
        return torch.load(path, map_location="cpu", weights_only=True)
    path = imagenet_cache_path(arch)
    if path.is_file():
        log.info("Backbone %s starts from ImageNet weights %s", arch, path)
        return torch.load(path, map_location="cpu", weights_only=True)
    if download:
        return imagenet_weights(arch).get_state_dict(progress=True)
    log.warning("No ImageNet %s weights at %s: the backbone trains FROM SCRATCH, unlike the published system "
                "(put torchvision's file there, set model.net.pretrained=<state dict> or model.net.download=true; "
                "model.net.pretrained=null silences this)", arch, path)
    return None


class ImageBackbone(nn.Module):
    """torchvision ResNet (``resnet34`` or ``resnet18``) on 1-channel images, without pool and classifier.

    Starts from ``pretrained`` (see :func:`backbone_state`): the RGB model's first conv is averaged
    over the colour channels. Nothing is downloaded unless ``download``.
    """

    def __init__(self, arch: str = "resnet34", pretrained: str | None = "imagenet", download: bool = False) -> None:
        super().__init__()
        if arch not in ("resnet18", "resnet34"):
            raise ValueError(f"backbone arch must be resnet18 or resnet34, got {arch!r}")
        resnet = getattr(torchvision.models, arch)(weights=None)
        state = backbone_state(arch, pretrained, download)
        if state is not None:
            resnet.load_state_dict(state)
        rgb = resnet.conv1.weight.detach()
        resnet.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if state is not None:
            with torch.no_grad():
                resnet.conv1.weight.copy_(rgb.mean(dim=1, keepdim=True))
        self.body = nn.Sequential(*list(resnet.children())[:-2])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class CardiacDreamer(nn.Module):
    """``(image_t1, action_change) -> (features t1, predicted features t2, predicted action t2 -> target)``.

    Actions enter and leave normalised; the task converts units and composes poses.
    """

    def __init__(self, image_size: int = 224, token_type: str = "channel", d_model: int = 768, num_heads: int = 12,
                 num_layers: int = 6, dim_feedforward: int = 3072, dropout: float = 0.1, arch: str = "resnet34",
                 pretrained: str | None = "imagenet", download: bool = False,
                 action_hidden: tuple[int, int] = (64, 256), head_hidden: tuple[int, int] = (1024, 512)) -> None:
        super().__init__()
        if token_type not in TOKEN_TYPES:
            raise ValueError(f"token_type must be one of {TOKEN_TYPES}, got {token_type!r}")
        self.token_type = token_type
        self.backbone = ImageBackbone(arch, pretrained, download)
        self.side = math.ceil(image_size / 32)  # the ResNet's output grid (7 at 224 px)
        cells = self.side * self.side
        token_dim, n_tokens = (cells, FEATURES) if token_type == "channel" else (FEATURES, cells)
        self.embed = nn.Linear(token_dim, d_model)
        self.unembed = nn.Linear(d_model, token_dim)
        self.action_token = nn.Sequential(nn.Linear(6, action_hidden[0]), nn.GELU(),
                                          nn.Linear(action_hidden[0], action_hidden[1]), nn.GELU(),
                                          nn.Linear(action_hidden[1], d_model))
        self.register_buffer("positions", sinusoidal_positions(n_tokens + 1, d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(d_model, num_heads, dim_feedforward, dropout, activation="gelu",
                                           batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.guidance = nn.Sequential(nn.Linear(FEATURES, head_hidden[0]), nn.GELU(), nn.Dropout(dropout),
                                      nn.Linear(head_hidden[0], head_hidden[1]), nn.GELU(),
                                      nn.Linear(head_hidden[1], 6))

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """``(B, 1, H, W)`` -> ``(B, 512, h, w)`` features."""
        return self.backbone(image)

    def dream(self, features: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Features of t1 and the (normalised) move -> predicted features of t2, same shape."""
        b, c, h, w = features.shape
        flat = features.flatten(2)  # (B, 512, h*w)
        tokens = self.embed(flat if self.token_type == "channel" else flat.transpose(1, 2))
        sequence = torch.cat([self.action_token(action)[:, None], tokens], dim=1) + self.positions
        out = self.unembed(self.transformer(sequence)[:, 1:])
        out = out if self.token_type == "channel" else out.transpose(1, 2)
        return out.reshape(b, c, h, w)

    def guide(self, features: torch.Tensor) -> torch.Tensor:
        """Features of a frame -> the (normalised) action from that frame to the target view."""
        return self.guidance(features.mean(dim=(2, 3)))

    def forward(self, image_t1: torch.Tensor, action_change: torch.Tensor) -> dict[str, torch.Tensor]:
        features_t1 = self.encode(image_t1)
        features_t2 = self.dream(features_t1, action_change)
        return {"features_t1": features_t1, "features_t2": features_t2, "action_t2": self.guide(features_t2)}
