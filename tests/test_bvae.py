"""Binary VAE parts: relaxation and KL by hand, repetition code properties, ECC validation, data, task."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from bioexp.compare import (
    best_checkpoint,
    data_identity,
    reductions,
    warn_different_data,
    warn_unrecorded_options,
    write,
)
from bioexp.data.binary import BinaryDataModule, load_mnist, read_idx, split_indices
from bioexp.errors import BioexpError, DataNotFoundError
from bioexp.nets.bvae import RepetitionCode, kl_to_uniform_bernoulli, relaxed_bernoulli, repetition_error_rate
from bioexp.tasks.bvae import SET_LATENTS, BinaryVAE, check_ecc
from bioexp.train import CONF_DIR
from tests.conftest import shared_data

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

ADAM = {"_target_": "torch.optim.Adam", "lr": 1e-3}
GUIDE_SETS = {0: (100, 100, 2), 1: (200, 100, 2), 2: (100, 200, 2), 3: (200, 200, 2), 4: (200, 200, 3),
              5: (200, 300, 2), 6: (300, 200, 3), 7: (500, 300, 5)}


# -- relaxation and KL ------------------------------------------------------------------------------
def test_kl_to_uniform_bernoulli_matches_hand_computation():
    kl = kl_to_uniform_bernoulli(torch.tensor([math.log(3.0), 0.0, -math.log(3.0)]))
    # q = 0.75: 0.75 ln 1.5 + 0.25 ln 0.5 = 0.130812; q = 0.5: 0; symmetric in q <-> 1-q.
    assert kl.tolist() == pytest.approx([0.130812, 0.0, 0.130812], abs=1e-6)
    assert kl_to_uniform_bernoulli(torch.tensor([40.0])).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_relaxed_bernoulli_values_and_straight_through_gradient():
    logits = torch.tensor([1.0, 0.0], requires_grad=True)
    noise = torch.tensor([0.5, 0.25])  # logistic noise log(u/(1-u)) = 0 and -ln 3
    soft = relaxed_bernoulli(logits, 0.5, noise, hard=False)
    assert soft.tolist() == pytest.approx([1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2 * math.log(3.0)))], abs=1e-5)
    hard = relaxed_bernoulli(logits, 0.5, noise)
    assert hard.tolist() == [1.0, 0.0]
    hard.sum().backward()
    y = 1 / (1 + math.exp(-2.0))
    assert logits.grad[0].item() == pytest.approx(y * (1 - y) / 0.5, rel=1e-4)  # d sigmoid(l/T) / dl


def test_hard_relaxed_samples_are_bernoulli_of_the_logits():
    torch.manual_seed(0)
    logits = torch.full((200_000,), math.log(0.3 / 0.7))
    assert relaxed_bernoulli(logits, 0.4).mean().item() == pytest.approx(0.3, abs=0.005)


# -- repetition code --------------------------------------------------------------------------------
bits_strategy = st.lists(st.integers(0, 1), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(bits=bits_strategy, R=st.integers(1, 5))
def test_repetition_round_trip(bits, R):
    code = RepetitionCode(R)
    b = torch.tensor(bits, dtype=torch.float32)
    encoded = code.encode(b)
    assert encoded.shape == (len(bits) * R,) and encoded.view(-1, R).eq(b[:, None]).all()
    assert torch.equal(code.decode(encoded), b)


@settings(max_examples=60, deadline=None)
@given(bits=bits_strategy, R=st.integers(1, 5), data=st.data())
def test_majority_vote_corrects_up_to_half_the_copies(bits, R, data):
    code = RepetitionCode(R)
    b = torch.tensor(bits, dtype=torch.float32)
    copies = code.encode(b).view(-1, R).clone()
    for row in copies:
        flips = data.draw(st.lists(st.integers(0, R - 1), max_size=(R - 1) // 2, unique=True))
        row[flips] = 1 - row[flips]
    assert torch.equal(code.decode(copies.flatten()), b)


@settings(max_examples=40, deadline=None)
@given(word=st.lists(st.integers(0, 1), min_size=4, max_size=24).filter(lambda w: len(w) % 4 == 0))
def test_ties_go_to_the_first_copy_deterministically(word):
    code = RepetitionCode(4)
    c = torch.tensor(word, dtype=torch.float32)
    groups = c.view(-1, 4)
    expected = torch.where(groups.sum(-1) == 2, groups[:, 0], (groups.sum(-1) > 2).float())
    assert torch.equal(code.decode(c), expected) and torch.equal(code.decode(c), code.decode(c.clone()))


def test_uniform_codewords_decode_to_uniform_bits_for_even_R():
    words = torch.tensor([[a, b] for a in (0.0, 1.0) for b in (0.0, 1.0)])  # all four R=2 codewords
    assert RepetitionCode(2).decode(words).flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_majority_probability_by_hand_and_by_enumeration():
    assert RepetitionCode(3).majority_prob(torch.tensor([0.9, 0.8, 0.1])).item() == pytest.approx(
        0.9 * 0.8 + 0.9 * 0.1 + 0.8 * 0.1 - 2 * 0.9 * 0.8 * 0.1)
    assert RepetitionCode(2).majority_prob(torch.tensor([0.3, 0.9])).item() == pytest.approx(0.3)  # tie: first copy
    torch.manual_seed(0)
    for R in (2, 3, 4, 5):
        code, p = RepetitionCode(R), torch.rand(R)
        words = torch.tensor([[(w >> r) & 1 for r in range(R)] for w in range(2**R)], dtype=torch.float32)
        weight = (words * p + (1 - words) * (1 - p)).prod(-1)
        assert code.majority_prob(p).item() == pytest.approx((weight * code.decode(words)[:, 0]).sum().item())


def test_straight_through_majority_and_consistency_have_gradients():
    code = RepetitionCode(3)
    c = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], requires_grad=True)
    info = code.decode_st(c)
    assert info.tolist() == [1.0, 0.0]
    info.sum().backward()
    assert c.grad.tolist() == pytest.approx([1 / 3] * 6)
    probs = torch.tensor([0.9, 0.8, 0.2, 0.1, 0.1, 0.1], requires_grad=True)
    loss = code.consistency(probs)
    assert loss.item() > 0 and code.consistency(torch.tensor([0.7] * 3 + [0.2] * 3)).item() == 0
    loss.backward()
    assert probs.grad[2].item() < 0  # the disagreeing copy is pulled up towards its group


# -- ECC validation and the parameter sets ------------------------------------------------------------
def test_ecc_validation_names_the_compatible_sets():
    with pytest.raises(BioexpError, match=r"100 % 3 = 1; R=3 needs parameter set 5 or 7 \(model/bvae_set=set5\)"):
        check_ecc(100, "repetition", 3)
    with pytest.raises(BioexpError, match="unknown model.ecc_type 'hamming'"):
        check_ecc(100, "hamming", 2)
    with pytest.raises(BioexpError, match="ecc_R must be an integer >= 2"):
        check_ecc(100, "repetition", 1)
    assert check_ecc(300, "repetition", 3) == 3
    assert check_ecc(101, None, None) is None


def test_ecc_R_without_ecc_type_is_an_error():
    """It used to train a plain VAE silently."""
    with pytest.raises(BioexpError, match=r"model.ecc_R=3 has no effect without an ECC: add model.ecc_type=repetition"):
        check_ecc(300, None, 3)
    with pytest.raises(BioexpError, match="model.ecc_R=3 has no effect"):
        BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, ecc_R=3)


def test_ecc_R2_warns_that_it_corrects_nothing(caplog):
    with caplog.at_level("WARNING", logger="bioexp.tasks.bvae"):
        assert check_ecc(300, "repetition", 3) == 3
    assert not caplog.records
    with caplog.at_level("WARNING", logger="bioexp.tasks.bvae"):
        model = BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, ecc_type="repetition")
    assert model.hparams.ecc_R == 2 and model.info_bits == 3  # the guide's default R when only the type is given
    (record,) = caplog.records
    assert record.levelname == "WARNING" and "R=2 corrects no channel error" in record.getMessage()
    assert "model.ecc_R=3" in record.getMessage()


def test_theoretical_decoded_bit_error_rates():
    for eps in (0.01, 0.05, 0.1):
        assert repetition_error_rate(1, eps) == pytest.approx(eps)
        assert repetition_error_rate(2, eps) == pytest.approx(eps)  # majority of two: nothing corrected
        assert repetition_error_rate(3, eps) == pytest.approx(3 * eps**2 - 2 * eps**3)
    # R=4: wrong with 3 or 4 flips, or 2 flips including the first copy (3 of the 6 pairs).
    eps = 0.1
    assert repetition_error_rate(4, eps) == pytest.approx(4 * eps**3 * 0.9 + eps**4 + 3 * eps**2 * 0.9**2)
    model = BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, ecc_type="repetition", ecc_R=3)
    assert model.expected_error_rates() == pytest.approx(
        {"code_R": 3, "latent_ber_theory_eps0.01": 0.000298, "latent_ber_theory_eps0.05": 0.00725,
         "latent_ber_theory_eps0.1": 0.028})
    with pytest.raises(BioexpError, match=r"model.flip_eps must be bit-flip probabilities in \(0, 1\)"):
        BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, flip_eps=(0.05, -0.1))
    with pytest.raises(BioexpError, match="model.iw_samples must be a positive number"):
        BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, iw_samples=0)


def test_parameter_set_files_match_the_guide_and_the_validation_table():
    for n, (hidden, latent, depth) in GUIDE_SETS.items():
        spec = yaml.safe_load((Path(CONF_DIR) / "model" / "bvae_set" / f"set{n}.yaml").read_text())
        assert (spec["hidden"], spec["latent"], spec["depth"]) == (hidden, latent, depth)
        assert SET_LATENTS[n] == latent


@pytest.mark.parametrize("experiment", ["bvae", "bvae_ecc"])
@pytest.mark.parametrize("n", range(8))
def test_every_set_composes_with_both_experiments(experiment, n):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"experiment={experiment}", f"model/bvae_set=set{n}"])
    assert (cfg.model.hidden, cfg.model.latent, cfg.model.depth) == GUIDE_SETS[n]
    assert cfg.model.ecc_type == (None if experiment == "bvae" else "repetition") and cfg.task_name == experiment
    config = OmegaConf.to_container(cfg.model, resolve=False)
    config.pop("_target_")
    config.pop("compile")  # run-time only: the runner hands it to set_accel, not the task
    config.update(input_dim=64, image_shape=[8, 8])
    if experiment == "bvae_ecc" and GUIDE_SETS[n][1] % 3:
        with pytest.raises(BioexpError, match="model/bvae_set=set5"):
            BinaryVAE(**config)
    else:
        assert BinaryVAE(**config).info_bits == GUIDE_SETS[n][1] // (3 if experiment == "bvae_ecc" else 1)


# -- data ---------------------------------------------------------------------------------------------
def test_digits_split_is_seeded_disjoint_and_subsettable():
    a, b = split_indices(1797, 0, 0.1, 0.1), split_indices(1797, 0, 0.1, 0.1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(1797))
    assert {k: len(v) for k, v in split_indices(1797, 0, 0.1, 0.1, subset=500).items()} == \
        {"test": 50, "val": 50, "train": 400}
    assert not np.array_equal(split_indices(1797, 1, 0.1, 0.1)["test"], a["test"])
    dm = BinaryDataModule(subset=500)
    dm.setup()
    x, label = dm.datasets["train"][0]
    assert x.shape == (64,) and set(x.unique().tolist()) <= {0.0, 1.0} and 0 <= label <= 9
    assert dm.dims == {"input_dim": 64, "image_shape": [8, 8]}


def test_dynamic_binarization_redraws_training_images_only():
    dm = BinaryDataModule(binarize="dynamic", subset=100)
    dm.setup()
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert not torch.equal(train[(0, 1)][0], train[(0, 2)][0]) or not torch.equal(train[(1, 1)][0], train[(1, 2)][0])
    assert torch.equal(train[(0, 1)][0], train[(0, 1)][0])
    assert torch.equal(val[(0, 1)][0], val[(0, 2)][0])


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()) if path.suffix == ".gz" else header + array.tobytes())


def test_subset_zero_means_the_full_set_and_too_large_a_subset_warns(caplog):
    for subset in (0, None):
        dm = BinaryDataModule(subset=subset)
        dm.setup()
        assert sum(len(d) for d in dm.datasets.values()) == 1797
    with caplog.at_level("WARNING", logger="bioexp.data.binary"):
        dm = BinaryDataModule(subset=5000)
        dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 1797
    assert "data.subset=5000 exceeds the 1797 digits images; using all of them" in caplog.text
    for subset in (-1, 5):
        with pytest.raises(BioexpError, match=f"data.subset={subset}: use at least 10 images, or 0/null"):
            BinaryDataModule(subset=subset)


def _mnist_root(tmp_path: Path, n_train: int = 600, gz: bool = True,
                n_labels: int | None = None) -> tuple[Path, np.ndarray]:
    """The real t10k files next to a fake training pair of ``n_train`` images (classes in turn), in torchvision's
    layout; ``gz=False`` stores every file decompressed. Returns the root and the fake training images."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        packed = shared_data("mnist", f"{name}.gz").read_bytes()
        (raw / (f"{name}.gz" if gz else name)).write_bytes(packed if gz else gzip.decompress(packed))
    images = np.random.default_rng(0).integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    suffix = ".gz" if gz else ""
    _write_idx(raw / f"train-images-idx3-ubyte{suffix}", images)
    _write_idx(raw / f"train-labels-idx1-ubyte{suffix}", np.arange(n_labels or n_train, dtype=np.uint8) % 10)
    return tmp_path, images


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_official_split_tests_on_the_real_t10k(tmp_path, gz):
    root, train_images = _mnist_root(tmp_path, gz=gz)
    data = load_mnist(root)
    assert data.x.shape == (10_600, 784) and data.shape == (28, 28) and data.n_train == 600
    assert np.allclose(data.x[0], train_images[0].reshape(-1) / 255) and data.x.max() <= 1
    dm = BinaryDataModule(source="mnist", root=str(root), subset=0, test_frac=None)  # the YAML's defaults
    assert dm.hparams.split == "official"
    dm.setup()
    test, val, train = dm.datasets["test"], dm.datasets["val"], dm.datasets["train"]
    assert len(test) == 10_000 and np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    t10k = read_idx(shared_data("mnist", "t10k-images-idx3-ubyte.gz"))
    assert np.array_equal(test.intensities, t10k.reshape(10_000, -1) / np.float32(255))  # in file order
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first t10k labels, as published
    # Validation: 10% of the 600 training images, stratified (6 per class), disjoint from train.
    assert len(val) == 60 and np.bincount(val.labels).tolist() == [6] * 10 and len(train) == 540
    train_rows = {row.tobytes() for row in train.intensities}
    assert not any(row.tobytes() in train_rows for row in val.intensities)
    # Seeded: the same seed gives the same validation images, another seed others.
    again, other = (BinaryDataModule(source="mnist", root=str(root), test_frac=None, seed=s) for s in (0, 1))
    again.setup(), other.setup()
    assert np.array_equal(again.datasets["val"].intensities, val.intensities)
    assert not np.array_equal(other.datasets["val"].intensities, val.intensities)
    # subset cuts the training images only, stratified; t10k stays whole.
    small = BinaryDataModule(source="mnist", root=str(root), test_frac=None, subset=200)
    small.setup()
    assert [len(small.datasets[s]) for s in ("train", "val", "test")] == [180, 20, 10_000]
    kept = np.concatenate([small.datasets["train"].labels, small.datasets["val"].labels])
    # Stratified up to sklearn's rounding of 200/600 x 60 (one image either way per class).
    assert np.abs(np.bincount(kept) - 20).max() <= 1
    assert np.abs(np.bincount(small.datasets["val"].labels) - 2).max() <= 1


def test_mnist_pooled_split_is_the_option(tmp_path):
    root, _ = _mnist_root(tmp_path)
    dm = BinaryDataModule(source="mnist", root=str(root), split="pooled", test_frac=0.1)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [8480, 1060, 1060]
    with pytest.raises(BioexpError, match="data.test_frac=0.1 applies to data.split=pooled only"):
        BinaryDataModule(source="mnist", root=str(root), split="official", test_frac=0.1)
    with pytest.raises(BioexpError, match="data.split=pooled needs data.test_frac"):
        BinaryDataModule(source="mnist", root=str(root), split="pooled", test_frac=None)
    with pytest.raises(BioexpError, match="data.source=digits has no official split; use data.split=pooled"):
        BinaryDataModule(split="official")


def test_mnist_image_and_label_counts_must_agree(tmp_path):
    root, _ = _mnist_root(tmp_path, n_labels=599)
    with pytest.raises(BioexpError, match=r"train-images-idx3-ubyte.gz holds 600 images but .*"
                                          r"train-labels-idx1-ubyte.gz holds 599 labels; the pair must match"):
        load_mnist(root)


def test_mnist_config_composes_to_the_official_split():
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        mnist = compose("train", overrides=["experiment=bvae", "data=mnist", "data.root=/x"]).data
        digits = compose("train", overrides=["experiment=bvae"]).data
    assert (mnist.split, mnist.test_frac, mnist.val_frac, mnist.subset) == ("official", None, 0.1, None)
    assert (digits.split, digits.test_frac) == ("pooled", 0.1)


def test_missing_mnist_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"no train-images-idx3-ubyte\[.gz\] under .*MNIST/raw.*"
                                                r"torchvision.datasets import MNIST.*data=digits"):
        load_mnist(tmp_path)
    with pytest.raises(BioexpError, match="unknown data.binarize"):
        BinaryDataModule(binarize="otsu")


# -- task ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ecc", [None, "repetition"])
def test_gradient_reaches_the_encoder_through_the_straight_through_path(ecc):
    torch.manual_seed(0)
    model = BinaryVAE(input_dim=64, optimizer=ADAM, hidden=16, latent=12, depth=1, ecc_type=ecc,
                      ecc_R=3 if ecc else None, beta_warmup_epochs=0, beta_max=0.0, lambda_consistency=0.0).train()
    x = (torch.rand(8, 64) > 0.5).float()
    model._losses(x)["recon_loss"].backward()
    assert model.encoder[0].weight.grad.abs().sum() > 0


def test_ecc_kl_is_over_the_information_bits():
    model = BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=6, depth=1, ecc_type="repetition", ecc_R=3)
    agreeing = torch.full((1, 6), 8.0)  # all copies certain: 2 certain information bits cost 2 ln 2, not 6 ln 2
    assert kl_to_uniform_bernoulli(model.info_logits(agreeing)).sum().item() == pytest.approx(2 * math.log(2), 1e-3)
    assert model.info_logits(torch.zeros(1, 6)).abs().max().item() < 1e-5


def test_beta_and_temperature_schedules(monkeypatch):
    model = BinaryVAE(input_dim=4, optimizer=ADAM, hidden=4, latent=4, depth=1, beta_max=0.5, beta_warmup_epochs=10)
    assert model.beta == 0.0 and model.temperature == 1.0
    monkeypatch.setattr(BinaryVAE, "current_epoch", property(lambda self: 4))
    monkeypatch.setattr(BinaryVAE, "global_step", property(lambda self: 5000))
    assert model.beta == pytest.approx(0.2) and model.temperature == pytest.approx(math.exp(-0.5))
    monkeypatch.setattr(BinaryVAE, "current_epoch", property(lambda self: 30))
    monkeypatch.setattr(BinaryVAE, "global_step", property(lambda self: 20_000))
    assert model.beta == 0.5 and model.temperature == 0.4  # warm-up done; exp(-2) = 0.135 floored at 0.4


def test_samples_and_error_rates():
    torch.manual_seed(0)
    model = BinaryVAE(input_dim=64, optimizer=ADAM, hidden=16, latent=30, depth=1, ecc_type="repetition",
                      ecc_R=3, image_shape=[8, 8]).eval()
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, 64) and samples.min() >= 0 and samples.max() <= 1
    x = (torch.rand(20_000, 64) > 0.5).float()
    errors = model.channel_errors(x, torch.Generator().manual_seed(0))
    # Majority of 3 fails when >= 2 of 3 copies flip: 3 eps^2 (1 - eps) + eps^3 (within 4 binomial sd over 200k bits).
    for eps in (0.01, 0.05, 0.1):
        p = 3 * eps**2 - 2 * eps**3
        assert errors[f"latent_ber_eps{eps:g}"].item() == pytest.approx(p, abs=4 * math.sqrt(p / 200_000))
    iw = model.iw_nll(x[:8], 16, torch.Generator().manual_seed(0))
    assert iw.shape == (8,) and torch.isfinite(iw).all()


def test_reductions_against_the_first_row():
    import pandas as pd

    table = pd.DataFrame({"latent_ber_eps0.05": [0.05, 0.01], "neg_elbo": [20.0, 21.0]}, index=["base", "ecc"])
    assert reductions(table).loc["ecc", "latent_ber_eps0.05"] == pytest.approx(0.8)
    assert "neg_elbo" not in reductions(table).columns


def test_comparison_markdown_flags_R2(tmp_path):
    import pandas as pd

    table = pd.DataFrame({"code_R": [1, 2], "latent_ber_eps0.05": [0.05, 0.049],
                          "latent_ber_theory_eps0.05": [0.05, 0.05], "checkpoint": ["a", "b"]},
                         index=["baseline", "ECC R=2"])
    markdown = write(table, tmp_path)
    assert "R=2 (ECC R=2): a majority of two copies ties whenever one flips, so it corrects no channel" in markdown
    assert reductions(table).loc["ECC R=2", "latent_ber_theory_eps0.05"] == 0


def test_compare_picks_the_recorded_best_checkpoint_and_never_guesses(tmp_path, caplog):
    import json

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for epoch in (9, 10):
        (run / "checkpoints" / f"epoch_{epoch:03d}.ckpt").write_bytes(b"x")
    with pytest.raises(BioexpError, match="records no best checkpoint .* holds 2: epoch_009.ckpt, epoch_010.ckpt"):
        best_checkpoint(run)
    # A moved run dir: the recorded absolute path is gone, the same file name under checkpoints/ is used.
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/checkpoints/epoch_009.ckpt"}))
    assert best_checkpoint(run) == run / "checkpoints" / "epoch_009.ckpt"
    (run / "metrics.json").write_text(json.dumps({"best_checkpoint": "/elsewhere/checkpoints/epoch_003.ckpt"}))
    with pytest.raises(BioexpError, match="best checkpoint /elsewhere/checkpoints/epoch_003.ckpt, which is gone"):
        best_checkpoint(run)
    (run / "metrics.json").unlink()
    (run / "checkpoints" / "epoch_010.ckpt").unlink()
    with caplog.at_level("WARNING", logger="bioexp.compare"):
        assert best_checkpoint(run).name == "epoch_009.ckpt"
    assert "has no best checkpoint on record" in caplog.text


def test_compare_warns_about_data_options_a_checkpoint_predates(caplog):
    old = {"source": "mnist", "root": "/data", "binarize": "threshold", "threshold": 0.5, "subset": None,
           "val_frac": 0.1, "test_frac": 0.1, "batch_size": 128, "num_workers": 2, "pin_memory": False, "seed": 0}
    with caplog.at_level("WARNING", logger="bioexp.compare"):
        assert warn_unrecorded_options(Path("old.ckpt"), BinaryDataModule, old) == ["split"]
        assert warn_unrecorded_options(Path("new.ckpt"), BinaryDataModule, {**old, "split": "pooled"}) == []
    assert [r.getMessage() for r in caplog.records] == [
        "old.ckpt was written before data option(s) split existed; testing with their current defaults"]


def test_compare_warns_when_rows_were_tested_on_different_data(caplog):
    base = {"source": "digits", "split": "pooled", "seed": 0, "batch_size": 16, "num_workers": 0}
    with caplog.at_level("WARNING", logger="bioexp.compare"):
        # Loading settings do not change the test images: no warning.
        assert warn_different_data([data_identity(base), data_identity({**base, "batch_size": 64})]) == []
        assert not caplog.records
        assert warn_different_data([data_identity(base), data_identity({**base, "seed": 1, "split": "official"})]) \
            == ["seed", "split"]
    assert "tested on different data (data.seed, data.split differ)" in caplog.text
