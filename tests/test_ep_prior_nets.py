"""EP-Prior nets: encoder/decoder shapes, mean-pooling start, the Gaussian wave sum against numpy, init, baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bioexp.nets.ep_prior import (
    DEFAULT_LATENT_DIMS,
    INIT_SIGMA,
    INIT_TAU,
    WAVES,
    AttentionPool1d,
    GaussianWaveDecoder,
    MeanPoolEncoder,
    MLPDecoder,
    ProjectionHead,
    StructuredEncoder,
)

QRS_OFFSETS = (-0.015, 0.0, 0.015)


def random_latents(batch: int, seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {name: scale * torch.randn(batch, size, generator=g) for name, size in DEFAULT_LATENT_DIMS.items()}


def numpy_wave_sum(tau: dict[str, float], sigma: dict[str, float], gate: dict[str, float],
                   amplitude: dict[str, np.ndarray], scale: float, length: int) -> np.ndarray:
    """Direct evaluation of scale * sum_w gate_w sum_k A_wk exp(-1/2 ((t - tau_w - offset_k) / sigma_w)^2)."""
    t = np.linspace(0, 1, length)
    offsets = {"P": (0.0,), "QRS": QRS_OFFSETS, "T": (0.0,)}
    out = np.zeros((amplitude["P"].shape[0], length))
    for wave in WAVES:
        for k, offset in enumerate(offsets[wave]):
            bump = np.exp(-0.5 * ((t - tau[wave] - offset) / sigma[wave]) ** 2)
            out += scale * gate[wave] * amplitude[wave][:, k : k + 1] * bump
    return out


def test_structured_encoder_shapes_and_uniform_attention_at_init():
    torch.manual_seed(0)
    encoder = StructuredEncoder("xresnet1d18").eval()
    latents, attention = encoder(torch.randn(3, 12, 100))
    assert {k: tuple(v.shape) for k, v in latents.items()} == {"P": (3, 32), "QRS": (3, 128), "T": (3, 64),
                                                               "HRV": (3, 32)}
    assert encoder.latent_dim == 256
    # stride 32: 100 -> 50 -> 25 -> 13 -> 7 -> 4 time steps in the feature map
    assert set(attention) == set(WAVES)
    for weights in attention.values():
        assert weights.shape == (3, 4)
        torch.testing.assert_close(weights, torch.full((3, 4), 0.25))
    assert all(torch.isfinite(z).all() for z in latents.values())


def test_xresnet1d50_backbone_feeds_2048_features_to_the_heads():
    torch.manual_seed(0)
    encoder = StructuredEncoder("xresnet1d50").eval()
    assert encoder.backbone.out_channels == 2048
    assert all(head[0].in_features == 2048 and head[0].out_features == 2048 for head in encoder.heads.values())
    latents, attention = encoder(torch.randn(1, 12, 32))
    assert latents["QRS"].shape == (1, 128) and attention["T"].shape == (1, 1)


def test_attention_pool_starts_as_mean_pooling():
    torch.manual_seed(0)
    pool = AttentionPool1d(8)
    features = torch.randn(4, 8, 13)
    pooled, weights = pool(features)
    torch.testing.assert_close(pooled, features.mean(dim=-1))
    torch.testing.assert_close(weights, torch.full((4, 13), 1 / 13))
    # learned scores move the weights, which still sum to one over time
    with torch.no_grad():
        pool.score.weight.normal_()
    _, weights = pool(features)
    assert not torch.allclose(weights, torch.full((4, 13), 1 / 13))
    torch.testing.assert_close(weights.sum(-1), torch.ones(4))


def test_latent_sizes_from_d_latent_or_a_partial_dict():
    encoder = StructuredEncoder("xresnet1d18", d_latent=16, stem_widths=(8, 8, 16), block_widths=(16, 16, 32, 32))
    assert encoder.latent_dims == {"P": 16, "QRS": 16, "T": 16, "HRV": 16} and encoder.latent_dim == 64
    latents, _ = encoder.eval()(torch.randn(2, 12, 100))
    assert all(z.shape == (2, 16) for z in latents.values())
    partial = StructuredEncoder("xresnet1d18", latent_dims={"QRS": 64}, stem_widths=(8, 8, 16),
                                block_widths=(16, 16, 32, 32))
    assert partial.latent_dims == {"P": 32, "QRS": 64, "T": 64, "HRV": 32}
    # d_latent wins over sizes spelled out in a config, like the training script's --d_latent
    overridden = StructuredEncoder("xresnet1d18", latent_dims={"P": 32, "QRS": 128, "T": 64, "HRV": 32}, d_latent=8,
                                   stem_widths=(8, 8, 16), block_widths=(16, 16, 32, 32))
    assert overridden.latent_dims == dict.fromkeys(("P", "QRS", "T", "HRV"), 8)
    with pytest.raises(ValueError, match="unknown latents \\['U'\\]"):
        StructuredEncoder("xresnet1d18", latent_dims={"U": 8})


def test_decoder_shapes_and_params():
    torch.manual_seed(0)
    decoder = GaussianWaveDecoder()
    x_hat, params = decoder(random_latents(5), 100)
    assert x_hat.shape == (5, 12, 100) and x_hat.dtype == torch.float32
    for wave, k in zip(WAVES, (1, 3, 1), strict=True):
        assert {key: tuple(v.shape) for key, v in params[wave].items()} == {
            "tau": (5,), "sigma": (5,), "gate": (5,), "amplitude": (5, 12, k), "centres": (5, k)}
    torch.testing.assert_close(params["QRS"]["centres"], params["QRS"]["tau"][:, None] + torch.tensor(QRS_OFFSETS))
    assert decoder(random_latents(2), 1000)[0].shape == (2, 12, 1000)


def test_decoder_values_match_numpy_for_hand_set_params():
    """Zero last-layer weights + chosen biases fix the params; the output must be the direct Gaussian sum."""
    tau = {"P": 0.18, "QRS": 0.37, "T": 0.7}
    sigma = {"P": 0.02, "QRS": 0.01, "T": 0.04}
    gate = {"P": 0.3, "QRS": 0.9, "T": 0.6}
    rng = np.random.default_rng(0)
    amplitude = {"P": rng.normal(size=(12, 1)), "QRS": rng.normal(size=(12, 3)), "T": rng.normal(size=(12, 1))}
    decoder = GaussianWaveDecoder(gate_min=0.1, sigma_min=0.005, output_scale_init=15.0)
    with torch.no_grad():
        for wave in WAVES:
            last = decoder.mlps[wave][-1]
            last.weight.zero_()
            last.bias.copy_(torch.tensor([
                math.log(tau[wave] / (1 - tau[wave])),
                math.log(math.expm1(sigma[wave] - 0.005)),
                math.log((gate[wave] - 0.1) / (1 - gate[wave])),  # gate = 0.1 + 0.9 sigmoid(b)
                *amplitude[wave].reshape(-1)]))
    x_hat, params = decoder(random_latents(2), 100)
    expected = numpy_wave_sum(tau, sigma, gate, amplitude, 15.0, 100)
    for b in range(2):
        np.testing.assert_allclose(x_hat[b].detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    for wave in WAVES:
        torch.testing.assert_close(params[wave]["tau"], torch.full((2,), tau[wave]))
        torch.testing.assert_close(params[wave]["sigma"], torch.full((2,), sigma[wave]))
        torch.testing.assert_close(params[wave]["gate"], torch.full((2,), gate[wave]))
        torch.testing.assert_close(params[wave]["amplitude"][1].double(), torch.from_numpy(amplitude[wave]))

    # render() on hand-made params (batch of different beats) agrees with numpy too
    hand = {wave: {"tau": torch.tensor([tau[wave], tau[wave] + 0.05]),
                   "sigma": torch.tensor([sigma[wave]] * 2), "gate": torch.tensor([gate[wave]] * 2),
                   "amplitude": torch.from_numpy(np.stack([amplitude[wave]] * 2)).float(),
                   "centres": torch.tensor([tau[wave], tau[wave] + 0.05])[:, None] + torch.tensor(
                       QRS_OFFSETS if wave == "QRS" else (0.0,))} for wave in WAVES}
    rendered = sum(decoder.render(hand, 250).values())
    shifted = {wave: value + 0.05 for wave, value in tau.items()}
    np.testing.assert_allclose(rendered[0].detach().numpy(), numpy_wave_sum(tau, sigma, gate, amplitude, 15.0, 250),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rendered[1].detach().numpy(),
                               numpy_wave_sum(shifted, sigma, gate, amplitude, 15.0, 250), rtol=1e-4, atol=1e-5)


def test_components_sum_to_reconstruction():
    torch.manual_seed(0)
    decoder = GaussianWaveDecoder()
    z = random_latents(4, scale=3.0)
    x_hat, _ = decoder(z, 100)
    parts = decoder.components(z, 100)
    assert set(parts) == set(WAVES) and all(p.shape == (4, 12, 100) for p in parts.values())
    torch.testing.assert_close(parts["P"] + parts["QRS"] + parts["T"], x_hat)
    # each part is a bump around its own wave: the P part is ~0 where the T wave sits
    assert parts["P"][..., 60:].abs().max() < 1e-6 * parts["P"].abs().max() + 1e-12


def test_gates_and_sigmas_stay_in_range_for_extreme_latents():
    torch.manual_seed(0)
    decoder = GaussianWaveDecoder(gate_min=0.2, sigma_min=0.004)
    for scale in (1.0, 1e3, -1e3):
        _, params = decoder(random_latents(64, seed=1, scale=scale), 100)
        for wave in WAVES:
            assert params[wave]["gate"].min() >= 0.2 and params[wave]["gate"].max() <= 1.0
            assert params[wave]["sigma"].min() >= 0.004
            assert params[wave]["tau"].min() >= 0.0 and params[wave]["tau"].max() <= 1.0
    _, params = decoder(random_latents(64, seed=1, scale=1e3), 100)
    assert params["QRS"]["gate"].max() > 0.99 and params["QRS"]["gate"].min() < 0.21  # saturates at both ends


def test_init_places_waves_physiologically_and_output_small():
    torch.manual_seed(0)
    decoder = GaussianWaveDecoder()
    assert decoder.output_scale.item() == 15.0 and isinstance(decoder.output_scale, nn.Parameter)
    x_hat, params = decoder(random_latents(32), 100)
    for wave, tau in INIT_TAU.items():
        assert (params[wave]["tau"] - tau).abs().max() < 0.02, wave
        assert (params[wave]["sigma"] - INIT_SIGMA[wave]).abs().max() < 0.2 * INIT_SIGMA[wave], wave
        assert (params[wave]["gate"] - 0.55).abs().max() < 0.05, wave
    assert INIT_TAU == {"P": 0.20, "QRS": 0.35, "T": 0.65}
    assert 0.02 < x_hat.abs().max() < 1.5  # small but nonzero
    # the beat is where the waves are: the R region carries more energy than the baseline before P
    assert x_hat[..., 33:38].abs().mean() > 10 * x_hat[..., :5].abs().mean()


@pytest.fixture
def single_thread():
    """Tiny tensors: extra intra-op threads only add syncs, which stall for seconds on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("single_thread")
def test_decoder_fits_a_synthetic_beat():
    """A linear 'encoder' + the wave decoder overfit a P-QRS-T beat with per-sample amplitude in a few hundred steps."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    tau = {"P": 0.22, "QRS": 0.36, "T": 0.62}
    sigma = {"P": 0.016, "QRS": 0.01, "T": 0.035}
    gate = dict.fromkeys(WAVES, 1.0)
    amplitude = {"P": rng.uniform(0.05, 0.15, (12, 1)), "QRS": rng.normal(0, 0.1, (12, 3)) + [0, 0.6, 0],
                 "T": rng.uniform(0.1, 0.2, (12, 1))}
    beat = torch.from_numpy(numpy_wave_sum(tau, sigma, gate, amplitude, 1.0, 100)).float()
    batch = 16
    factors = torch.linspace(0.7, 1.3, batch)
    target = factors[:, None, None] * beat
    inputs = torch.cat([factors[:, None], torch.randn(batch, 7)], dim=1)
    encoder = nn.Linear(8, sum(DEFAULT_LATENT_DIMS.values()))
    decoder = GaussianWaveDecoder()
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=3e-3)

    def loss() -> torch.Tensor:
        z = dict(zip(DEFAULT_LATENT_DIMS, encoder(inputs).split(list(DEFAULT_LATENT_DIMS.values()), 1), strict=True))
        return ((decoder(z, 100)[0] - target) ** 2).mean()

    initial = loss().item()
    for _ in range(200):
        optimiser.zero_grad()
        value = loss()
        value.backward()
        optimiser.step()
    final = loss().item()
    assert final < initial / 5, (initial, final)


def test_mean_pool_encoder_has_the_structured_return_shape():
    torch.manual_seed(0)
    encoder = MeanPoolEncoder("xresnet1d18", latent_dim=256).eval()
    latents, attention = encoder(torch.randn(3, 12, 100))
    assert set(latents) == {"z"} and latents["z"].shape == (3, 256) and attention == {}
    assert encoder.latent_dim == 256
    head = encoder.head
    assert [type(m) for m in head] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    assert head[0].in_features == head[0].out_features == 512 and head[3].out_features == 256


def test_mlp_decoder_shapes_lengths_and_errors():
    torch.manual_seed(0)
    z = {"z": torch.randn(2, 256)}
    decoder = MLPDecoder(length=100)
    x_hat, params = decoder(z, 100)
    assert x_hat.shape == (2, 12, 100) and params == {} and decoder.upsample is None
    assert [m.out_features for m in decoder.mlp if isinstance(m, nn.Linear)] == [512, 512, 512, 1200]

    long = MLPDecoder(length=1000)
    x_long, _ = long(z, 1000)
    assert x_long.shape == (2, 12, 1000)
    assert long.upsample.kernel_size == (10,) and long.upsample.stride == (10,)
    # the transposed conv starts as nearest-neighbour upsampling of the MLP's 100-sample beat
    coarse = long.mlp(z["z"]).reshape(2, 12, 100)
    torch.testing.assert_close(x_long, coarse.repeat_interleave(10, dim=-1))

    # the structured latents (256 in total) decode too
    x_structured, _ = decoder(random_latents(2), 100)
    assert x_structured.shape == (2, 12, 100)

    with pytest.raises(ValueError, match="length=250 must be a multiple of base_length=100"):
        MLPDecoder(base_length=100, length=250)
    with pytest.raises(ValueError, match="built for length=100, got length=1000"):
        decoder(z, 1000)
    with pytest.raises(ValueError, match="128 features in total, decoder expects 256"):
        decoder({"z": torch.randn(2, 128)}, 100)


def test_projection_head():
    torch.manual_seed(0)
    head = ProjectionHead(256, 256, 128)
    out = head(torch.randn(4, 256))
    assert out.shape == (4, 128)
    x = torch.randn(1, 256)
    torch.testing.assert_close(head(x), head.net[2](torch.relu(head.net[0](x))))


def test_published_decoder_has_separate_heads_and_the_published_init():
    """heads=separate: an MLP each for tau, sigma, gate and amplitudes; biases as published (-1.5/-0.5/0.5 ...)."""
    sigmoid = lambda b: 1 / (1 + math.exp(-b))  # noqa: E731
    published = {"tau": (-1.5, -0.5, 0.5), "sigma": (-2.0, -2.5, -1.5), "gate": (2.0, 3.0, 2.0)}
    init = {"init_tau": {w: sigmoid(b) for w, b in zip(WAVES, published["tau"], strict=True)},
            "init_sigma": {w: math.log1p(math.exp(b)) + 0.005 for w, b in zip(WAVES, published["sigma"], strict=True)},
            "init_gate": {w: 0.1 + 0.9 * sigmoid(b) for w, b in zip(WAVES, published["gate"], strict=True)}}
    torch.manual_seed(0)
    decoder = GaussianWaveDecoder(heads="separate", param_weight_scale=1.0, init_amplitude_bias_zero=False, **init)
    for i, wave in enumerate(WAVES):
        heads = decoder.mlps[wave].heads
        assert [h[-1].out_features for h in heads] == [1, 1, 1, 12 * (3 if wave == "QRS" else 1)]
        assert all(h[0].in_features == DEFAULT_LATENT_DIMS[wave] and h[0].out_features == 256 for h in heads)
        for j, name in enumerate(("tau", "sigma", "gate")):
            assert heads[j][-1].bias.item() == pytest.approx(published[name][i], abs=1e-5), (wave, name)
        assert heads[3][-1].bias.abs().max() > 0  # PyTorch's default init, not zeroed
    x_hat, params = decoder(random_latents(4), 1000)
    assert x_hat.shape == (4, 12, 1000)
    x_hat.sum().backward()
    assert all(h[0].weight.grad is not None for wave in WAVES for h in decoder.mlps[wave].heads)
    with pytest.raises(ValueError, match="unknown decoder heads"):
        GaussianWaveDecoder(heads="tied")
