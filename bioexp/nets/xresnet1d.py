"""1-D XResNet, the strongest model of the PTB-XL benchmark (Strodthoff et al., 2021).

Follows the fastai "bag of tricks" ResNet (three-conv stem, avg-pool shortcut downsampling,
zero-initialised last BatchNorm per block) in 1-D, with the benchmark's head: concat pooling
(max + mean) -> BN -> Dropout -> Linear(128) -> ReLU -> BN -> Dropout -> Linear(classes).
With ``num_classes=None`` the head is dropped and ``forward`` returns the feature map
``[B, 512 * expansion, L]`` that self-supervised models pool themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LAYERS = {"xresnet1d18": (2, 2, 2, 2), "xresnet1d34": (3, 4, 6, 3), "xresnet1d50": (3, 4, 6, 3),
          "xresnet1d101": (3, 4, 23, 3), "xresnet1d152": (3, 8, 36, 3)}
EXPANSION = {"xresnet1d18": 1, "xresnet1d34": 1, "xresnet1d50": 4, "xresnet1d101": 4, "xresnet1d152": 4}


def conv_bn(c_in: int, c_out: int, kernel_size: int, stride: int = 1, act: bool = True,
            zero_bn: bool = False) -> nn.Sequential:
    """Conv1d (no bias) + BatchNorm (+ ReLU); ``zero_bn`` makes a residual branch start as identity."""
    bn = nn.BatchNorm1d(c_out)
    nn.init.constant_(bn.weight, 0.0 if zero_bn else 1.0)
    layers: list[nn.Module] = [
        nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False), bn]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Basic (expansion 1) or bottleneck (expansion 4) residual block."""

    def __init__(self, expansion: int, c_in: int, width: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        c_out = width * expansion
        if expansion == 1:
            self.convs = nn.Sequential(conv_bn(c_in, width, kernel_size, stride),
                                       conv_bn(width, c_out, kernel_size, act=False, zero_bn=True))
        else:
            self.convs = nn.Sequential(conv_bn(c_in, width, 1), conv_bn(width, width, kernel_size, stride),
                                       conv_bn(width, c_out, 1, act=False, zero_bn=True))
        shortcut: list[nn.Module] = []
        if stride != 1:
            shortcut.append(nn.AvgPool1d(stride, ceil_mode=True))
        if c_in != c_out:
            shortcut.append(conv_bn(c_in, c_out, 1, act=False))
        self.shortcut = nn.Sequential(*shortcut)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.convs(x) + self.shortcut(x))


class ClassifierHead(nn.Module):
    """The benchmark's head: concat pooling then a BN-Dropout-Linear MLP."""

    def __init__(self, c_in: int, num_classes: int, hidden: Sequence[int] = (128,), dropout: float = 0.5) -> None:
        super().__init__()
        sizes = [2 * c_in, *hidden, num_classes]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            # fastai's create_head halves the dropout of all but the last linear layer.
            layers += [nn.BatchNorm1d(a), nn.Dropout(dropout / 2 if i < len(sizes) - 2 else dropout),
                       nn.Linear(a, b)]
            if i < len(sizes) - 2:
                layers.append(nn.ReLU(inplace=True))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([features.amax(dim=-1), features.mean(dim=-1)], dim=1)
        return self.mlp(pooled)


class XResNet1d(nn.Module):
    """XResNet over ``[B, in_channels, T]`` signals; any ``T`` works (global pooling)."""

    def __init__(self, arch: str = "xresnet1d101", in_channels: int = 12, num_classes: int | None = None,
                 kernel_size: int = 5, kernel_size_stem: int = 5, stem_widths: Sequence[int] = (32, 32, 64),
                 block_widths: Sequence[int] = (64, 128, 256, 512), head_hidden: Sequence[int] = (128,),
                 head_dropout: float = 0.5) -> None:
        super().__init__()
        if arch not in LAYERS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(LAYERS)}")
        expansion, layers = EXPANSION[arch], LAYERS[arch]
        widths = [in_channels, *stem_widths]
        stem = [conv_bn(widths[i], widths[i + 1], kernel_size_stem, stride=2 if i == 0 else 1)
                for i in range(len(stem_widths))]
        blocks: list[nn.Module] = []
        c_in = stem_widths[-1]
        for stage, (n_blocks, width) in enumerate(zip(layers, block_widths, strict=True)):
            for i in range(n_blocks):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ResBlock(expansion, c_in, width, stride, kernel_size))
                c_in = width * expansion
        self.features = nn.Sequential(*stem, nn.MaxPool1d(3, stride=2, padding=1), *blocks)
        self.out_channels = c_in
        self.head = None if num_classes is None else ClassifierHead(c_in, num_classes, head_hidden, head_dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        return features if self.head is None else self.head(features)
