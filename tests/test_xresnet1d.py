"""xresnet1d: shapes, the headless feature map, and the identity-at-init residual blocks."""

from __future__ import annotations

import pytest
import torch

from bioexp.nets.xresnet1d import ResBlock, XResNet1d


@pytest.mark.parametrize(("arch", "channels"), [("xresnet1d50", 2048), ("xresnet1d101", 2048), ("xresnet1d18", 512)])
def test_feature_map_and_logits_shapes(arch: str, channels: int):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 250)
    features = XResNet1d(arch, num_classes=None).eval()(x)
    assert features.shape == (2, channels, 8)  # stride 32: 250 -> 125 -> 63 -> 32 -> 16 -> 8
    logits = XResNet1d(arch, num_classes=5).eval()(torch.randn(3, 12, 1000))  # any length (global pooling)
    assert logits.shape == (3, 5) and torch.isfinite(logits).all()


def test_depth_changes_parameter_count_as_in_the_benchmark():
    def count(arch: str) -> int:
        return sum(p.numel() for p in XResNet1d(arch, num_classes=5).parameters())

    assert count("xresnet1d18") < count("xresnet1d50") < count("xresnet1d101")
    # Bottleneck stages 3-4-6-3 vs 3-4-23-3: the 17 extra 1024-channel blocks.
    extra = 17 * sum(p.numel() for p in ResBlock(4, 1024, 256, 1, 5).parameters())
    assert count("xresnet1d101") - count("xresnet1d50") == extra


def test_residual_blocks_start_as_identity_plus_relu():
    torch.manual_seed(0)
    block = ResBlock(4, 64, 16, 1, 5).eval()
    x = torch.randn(2, 64, 30)
    assert torch.equal(block.convs(x), torch.zeros_like(x))
    assert torch.equal(block(x), torch.relu(x))


def test_unknown_arch_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown arch 'resnet9'"):
        XResNet1d("resnet9")
