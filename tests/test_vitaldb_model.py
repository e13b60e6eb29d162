"""VitalDB MSM parts: masking, MR-STFT, the warm-up/cosine schedule, TTM encoder/decoder, channel inflation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bioexp.errors import BioexpError
from bioexp.losses import multi_resolution_stft_loss
from bioexp.masking import apply_mask, expand_mask, patch_mask
from bioexp.nets.inflate import inflate_state_dict
from bioexp.tasks.schedules import WarmupCosineLR, warmup_cosine_factor


def test_random_mask_has_the_exact_ratio_and_differs_between_examples():
    mask = patch_mask(64, 10, 0.4, "random", torch.Generator().manual_seed(0))
    assert mask.shape == (64, 10) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == 4).all()
    assert len({tuple(row.tolist()) for row in mask}) > 30
    assert mask.float().mean(dim=0).min() > 0.3 and mask.float().mean(dim=0).max() < 0.55  # every patch gets masked
    assert (patch_mask(8, 10, 0.01).sum(dim=1) == 1).all() and (patch_mask(8, 10, 0.99).sum(dim=1) == 9).all()
    with pytest.raises(ValueError, match="mask type"):
        patch_mask(2, 10, 0.4, "stripes")


def test_block_mask_is_one_contiguous_span():
    mask = patch_mask(200, 10, 0.4, "block", torch.Generator().manual_seed(1))
    assert (mask.sum(dim=1) == 4).all()
    for row in mask:
        idx = row.nonzero().flatten()
        assert (idx.diff() == 1).all()
    starts = mask.float().argmax(dim=1)
    assert set(starts.tolist()) == set(range(7))  # every start position 0..6 occurs


def test_mask_is_shared_by_all_channels_and_zeroes_whole_patches():
    x = torch.randn(3, 2, 50) + 5
    mask = patch_mask(3, 10, 0.4, generator=torch.Generator().manual_seed(2))
    masked = apply_mask(x, mask, 5)
    full = expand_mask(mask, 2, 5)
    assert full.shape == (3, 2, 50)
    torch.testing.assert_close(full[:, 0], full[:, 1])
    assert (masked[full] == 0).all() and torch.equal(masked[~full], x[~full])
    assert torch.equal(full[0, 0].view(10, 5).all(dim=1), mask[0])
    with pytest.raises(ValueError, match="not 10 patches of 4"):
        apply_mask(x, mask, 4)


def _direct_stft_magnitude(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """|STFT| written out: reflect padding of n_fft/2, periodic Hann frames every hop, rfft."""
    padded = np.pad(x, n_fft // 2, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = [padded[s:s + n_fft] * window for s in range(0, len(padded) - n_fft + 1, hop)]
    return np.abs(np.fft.rfft(np.stack(frames), axis=1)).T


def _direct_mr_stft(y: torch.Tensor, x: torch.Tensor, floor_db: float | None) -> float:
    expected = []
    for n_fft, hop in ((512, 128), (1024, 256), (2048, 512)):
        per_signal = []
        for a, b in zip(y.reshape(-1, 1250).double().numpy(), x.reshape(-1, 1250).double().numpy(), strict=True):
            est, target = _direct_stft_magnitude(a, n_fft, hop), _direct_stft_magnitude(b, n_fft, hop)
            assert target.shape == (n_fft // 2 + 1, 1 + 1250 // hop)  # 2048: 3 frames of a 1250 window
            floor = max(1e-5, target.max() * 10 ** (-floor_db / 20)) if floor_db is not None else 1e-5
            per_signal.append(np.abs(np.log(np.maximum(est, floor)) - np.log(np.maximum(target, floor))))
        expected.append(np.mean(per_signal))
    return float(np.mean(expected))


@pytest.mark.parametrize("floor_db", [60.0, 20.0, None])
def test_mr_stft_matches_a_direct_computation_on_1250_sample_windows(floor_db):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 2, 1250, generator=g), torch.randn(2, 2, 1250, generator=g)
    x[0, 1] = torch.sin(torch.arange(1250) / 125 * 2 * np.pi * 1.2)  # band-limited: most bins far below peak
    loss = multi_resolution_stft_loss(y, x, floor_db=floor_db)
    assert loss.item() == pytest.approx(_direct_mr_stft(y, x, floor_db), rel=1e-4)
    assert multi_resolution_stft_loss(x, x, floor_db=floor_db).item() == 0


def test_mr_stft_floor_keeps_empty_bins_from_dominating():
    """A sinusoid vs the same sinusoid plus faint noise: without the floor, the empty bins make the loss huge."""
    t = torch.arange(1250) / 125
    x = torch.sin(2 * np.pi * 1.2 * t).view(1, 1, -1)
    noisy = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert multi_resolution_stft_loss(noisy, x, floor_db=None) > 1.0
    assert multi_resolution_stft_loss(noisy, x, floor_db=60.0) < 0.2


def test_mr_stft_refuses_a_window_too_short_for_an_fft_size():
    with pytest.raises(BioexpError, match="1000 samples is too short for an FFT size of 2048"):
        multi_resolution_stft_loss(torch.randn(1, 2, 1000), torch.randn(1, 2, 1000))
    assert multi_resolution_stft_loss(torch.randn(1, 1, 1000), torch.randn(1, 1, 1000), [512], [128]) > 0


def test_warmup_then_cosine_schedule_values():
    assert [warmup_cosine_factor(e, 10, 100) for e in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert warmup_cosine_factor(10, 10, 100) == pytest.approx(1.0)
    assert warmup_cosine_factor(55, 10, 100) == pytest.approx(0.5)
    assert warmup_cosine_factor(99, 10, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert warmup_cosine_factor(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=5e-4)
    scheduler = WarmupCosineLR(optimizer, warmup_epochs=10, max_epochs=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(5e-5) and lrs[9] == pytest.approx(5e-4) and max(lrs) == pytest.approx(5e-4)
    assert lrs[55] == pytest.approx(2.5e-4) and lrs[-1] < 1e-6
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))


def test_inflation_copies_known_channels_and_starts_new_ones_at_their_mean():
    g = torch.Generator().manual_seed(0)
    pretrained = {"shared": torch.randn(4, 4, generator=g), "tied": torch.randn(2 * 3, 5, generator=g),
                  "mix": torch.randn(2, 2, generator=g)}
    target = {"shared": torch.zeros(4, 4), "tied": torch.zeros(5 * 3, 5), "mix": torch.zeros(5, 5)}
    old, new = ["PPG", "ECG"], ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"]
    out = inflate_state_dict(pretrained, target, old, new, noise_std=0.01, seed=0)
    assert torch.equal(out["shared"], pretrained["shared"])
    tied = out["tied"].view(5, 3, 5)
    torch.testing.assert_close(tied[3], pretrained["tied"][:3], rtol=0, atol=0)  # PPG block
    torch.testing.assert_close(tied[4], pretrained["tied"][3:], rtol=0, atol=0)  # ECG block
    mean = pretrained["tied"].view(2, 3, 5).mean(dim=0)
    noise = tied[:3] - mean
    assert noise.abs().min() > 0 and noise.abs().max() < 0.05 and 0.005 < noise.std() < 0.02
    assert not torch.equal(tied[0], tied[1])  # each new channel its own noise
    torch.testing.assert_close(out["mix"][3:, 3:], pretrained["mix"], rtol=0, atol=0)  # both dims tied
    assert out["mix"].shape == (5, 5)
    same = inflate_state_dict(pretrained, {k: v[:2] if k == "mix" else v for k, v in pretrained.items()}, old, old)
    assert all(torch.equal(same[k], pretrained[k]) for k in pretrained)
    with pytest.raises(BioexpError, match="lack"):
        inflate_state_dict(pretrained, {**target, "head": torch.zeros(1)}, old, new)
    with pytest.raises(BioexpError, match="not 2 channels x k"):
        inflate_state_dict(pretrained, {**target, "shared": torch.zeros(7, 4)}, old, new)
    with pytest.raises(BioexpError, match="equal counts"):
        inflate_state_dict(pretrained, pretrained, old, ["ECG", "PPG"])


def test_ttm_encoder_decoder_shapes_and_channel_layout():
    from bioexp.nets.ttm import PatchDecoder, TTMEncoder

    torch.manual_seed(0)
    encoder = TTMEncoder(in_channels=2).eval()
    z = encoder(torch.randn(3, 2, 1250))
    assert z.shape == (3, 10, 192) and encoder.n_patches == 10 and len(encoder.blocks) == 3
    decoder = PatchDecoder(192, 2, 125)
    with torch.no_grad():
        decoder.proj.weight.zero_()
        decoder.proj.bias.copy_(torch.arange(250.0))
    out = decoder(z)
    assert out.shape == (3, 2, 1250)
    torch.testing.assert_close(out[0, 1, 125:250], torch.arange(125.0, 250.0))  # rows 125..249: channel 1
    with pytest.raises(BioexpError, match="whole number"):
        TTMEncoder(in_channels=2, context_length=1000, patch_size=128)
    with pytest.raises(BioexpError, match="not found"):
        TTMEncoder(in_channels=2, pretrained_path="/nonexistent/ttm")


def test_inflating_a_mix_channel_ttm_from_two_to_five_channels():
    from bioexp.nets.ttm import TTMEncoder

    torch.manual_seed(0)
    small, big = TTMEncoder(2, mode="mix_channel"), TTMEncoder(5, mode="mix_channel")
    state = inflate_state_dict(small.state_dict(), big.state_dict(), ["PPG", "ECG"],
                               ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"])
    big.load_state_dict(state)
    key = "model.encoder.mlp_mixer_encoder.mixers.0.channel_feature_mixer.gating_block.attn_layer.weight"
    assert torch.equal(big.state_dict()[key][3:, 3:], small.state_dict()[key])
    patcher = "model.encoder.patcher.weight"
    assert torch.equal(big.state_dict()[patcher], small.state_dict()[patcher])
    assert big.eval()(torch.randn(2, 5, 1250)).shape == (2, 10, 192)
