"""CSI-Predictor networks: shapes, backbones, local pretrained weights, and no download without being asked."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torchvision.models import densenet121

from bioexp.errors import BioexpError, WeightsNotFoundError
from bioexp.nets.csi import CSINet, Custom1, RadDINO, build_backbone, chexnet

TINY_DINO = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "mlp_ratio": 2, "patch_size": 14,
             "image_size": 28}


@pytest.fixture(autouse=True)
def _no_hub_cache(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: pretrained weights can come only from local paths."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)


def test_custom_1_has_five_convs_and_1024_features():
    net = Custom1()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1024]
    assert [c.kernel_size[0] for c in convs] == [7, 5, 3, 3, 3] and all(c.stride == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 2
    assert net.out_features == 1024 and net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1024)


@pytest.mark.parametrize(("backbone", "size", "features"), [
    ({"name": "custom_1", "widths": [4, 4, 8, 8, 16]}, 32, 16),
    ({"name": "resnet50"}, 32, 2048),
    ({"name": "chexnet"}, 32, 1024),
    ({"name": "raddino", "config": TINY_DINO}, 28, 32),
])
def test_each_backbone_gives_six_zone_logits(backbone, size, features):
    torch.manual_seed(0)
    net = CSINet({**backbone, "pretrained": False, "input_size": size, "normalize": "imagenet"}).eval()
    assert [h.in_features for h in net.heads] == [features] * 6 and net.dropout.p == 0.5
    assert net(torch.randn(2, 3, size, size)).shape == (2, 6, 5)


@pytest.mark.parametrize("name", ["resnet50", "chexnet", "raddino"])
def test_pretrained_without_local_weights_names_both_ways_out(name):
    with pytest.raises(WeightsNotFoundError, match=r"weights_path=.*pretrained=false"):
        build_backbone(name, pretrained=True, config=TINY_DINO)


def test_pretrained_auto_uses_torchvisions_cache_when_present_else_warns_once(tmp_path, caplog):
    from torchvision.models import ResNet50_Weights, resnet50

    with caplog.at_level(logging.WARNING):
        build_backbone("resnet50", pretrained="auto")
    assert [r.getMessage().count("training from scratch") for r in caplog.records] == [1]
    torch.manual_seed(1)
    reference = resnet50(weights=None)
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet50_Weights.IMAGENET1K_V2.url).name
    cache.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cache)
    caplog.clear()
    for pretrained in ("auto", True):
        net, _ = build_backbone("resnet50", pretrained=pretrained)
        torch.testing.assert_close(net.state_dict()["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert not caplog.records
    with pytest.raises(BioexpError, match="true, false or auto"):
        build_backbone("resnet50", pretrained="yes")
    assert build_backbone("custom_1", pretrained="auto", widths=[4, 4, 8, 8, 16])[1] == 16  # none to find


def test_a_chexnet_checkpoint_loads_from_a_local_path(tmp_path):
    torch.manual_seed(0)
    reference = densenet121(weights=None)
    # CheXNet's layout: DataParallel + a densenet121 attribute, old-style "norm.1" names, its own classifier
    state = {"module.densenet121." + k.replace("norm1", "norm.1").replace("conv2", "conv.2"): v
             for k, v in reference.state_dict().items() if not k.startswith("classifier")}
    state["module.densenet121.classifier.0.weight"] = torch.zeros(14, 1024)
    torch.save({"epoch": 1, "state_dict": state}, tmp_path / "model.pth.tar")
    net, features = chexnet(pretrained=True, weights_path=str(tmp_path / "model.pth.tar"))
    assert features == 1024
    x = torch.randn(1, 3, 32, 32)
    reference.classifier = torch.nn.Identity()
    torch.testing.assert_close(net.eval()(x), reference.eval()(x))


def test_raddino_weights_load_from_a_local_directory(tmp_path):
    torch.manual_seed(0)
    source = RadDINO(TINY_DINO).eval()
    source.encoder.save_pretrained(tmp_path / "rad-dino")
    loaded = RadDINO({}, pretrained=True, weights_path=str(tmp_path / "rad-dino")).eval()
    x = torch.randn(1, 3, 28, 28)
    torch.testing.assert_close(loaded(x), source(x))
    with pytest.raises(WeightsNotFoundError, match="rad-dino"):
        RadDINO({}, pretrained=True, weights_path=str(tmp_path / "missing"))


def test_a_resnet50_state_dict_loads_and_a_wrong_one_is_refused(tmp_path):
    from torchvision.models import resnet50

    torch.save({"module." + k: v for k, v in resnet50(weights=None).state_dict().items()}, tmp_path / "r50.pth")
    net, features = build_backbone("resnet50", pretrained=True, weights_path=str(tmp_path / "r50.pth"))
    assert features == 2048 and isinstance(net.fc, torch.nn.Identity)
    torch.save(Custom1().state_dict(), tmp_path / "other.pth")
    with pytest.raises(Exception, match="does not fit"):
        build_backbone("resnet50", weights_path=str(tmp_path / "other.pth"))
