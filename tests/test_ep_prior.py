"""EP-Prior study: the three experiments train end to end; objective, warm-up, checkpoints, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bioexp.evaluate import evaluate
from bioexp.tasks.ep_prior import EPPrior
from bioexp.train import train
from tests.conftest import compose_cfg, data_overrides

SMALL = ["model.encoder.arch=xresnet1d18", "trainer=cpu", "callbacks.rich_progress_bar=null",
         "callbacks.embedding_probe.ks=[10]", "callbacks.embedding_probe.seeds=[0]"]


def _run(tmp_path: Path, synth_root: Path, experiment: str, *overrides: str) -> tuple[dict, Path]:
    out = tmp_path / experiment
    cfg = compose_cfg([f"experiment={experiment}", *data_overrides(synth_root, tmp_path / "cache"), *SMALL,
                       *overrides], out)
    return train(cfg)[0], out


@pytest.mark.parametrize("experiment", ["ep_prior", "ep_prior_baseline", "ep_prior_ablation", "ep_prior_no_contrast"])
def test_each_study_experiment_trains_tests_and_evaluates(tmp_path, synth_root, experiment):
    summary, out = _run(tmp_path, synth_root, experiment, "debug=limit", "trainer.max_epochs=2")
    metrics = summary["metrics"]
    assert {"train/recon_loss", "val/recon_loss", "val/loss", "test/recon_loss"} <= set(metrics)
    assert ("train/contrast_loss" in metrics) is (experiment != "ep_prior_no_contrast")
    structured = experiment != "ep_prior_baseline"
    assert ("train/ep_loss" in metrics) is structured
    assert ("train/gate_P" in metrics and "train/output_scale" in metrics) is structured
    few_shot = pd.read_csv(out / "few_shot.csv")
    assert list(few_shot["k"].astype(str)) == ["10", "all"] and few_shot["auroc_mean"].between(0, 1).all()
    assert (out / "plots" / "reconstruction.png").stat().st_size > 10_000
    interp = out / "interpretability.json"
    assert interp.is_file() is structured
    if structured:
        result = json.loads(interp.read_text())
        assert -1 <= result["spearman_pr"] <= 1 and result["n_qt"] > 0 and 0.1 <= result["gate_QRS"] <= 1
    model = EPPrior.load_from_checkpoint(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    x = torch.randn(2, 12, 100)
    assert model.eval().embed(x).shape == (2, 256)
    if experiment == "ep_prior":  # evaluating the best checkpoint again reproduces the post-test tables
        cfg = compose_cfg([f"ckpt_path={summary['best_checkpoint']}", "callbacks=ssl_eval", "trainer=cpu",
                           "callbacks.embedding_probe.ks=[10]", "callbacks.embedding_probe.seeds=[0]"],
                          tmp_path / "eval", config_name="eval")
        evaluate(cfg)
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "eval" / "few_shot.csv"), few_shot)
        assert json.loads((tmp_path / "eval" / "interpretability.json").read_text()) == pytest.approx(result)


def test_reconstruction_loss_falls_when_overfitting_a_batch(tmp_path, synth_root):
    _, out = _run(tmp_path, synth_root, "ep_prior", "debug=overfit", "trainer.max_epochs=20",
                  "trainer.overfit_batches=1", "model.lambda_contrastive=0", "model.optimizer.lr=3e-3",
                  "callbacks.embedding_probe=null", "callbacks.interval_agreement=null")
    recon = pd.read_csv(out / "csv" / "metrics.csv")["train/recon_loss"].dropna().to_numpy()
    assert recon[-1] < 0.7 * recon[0] and recon[-1] < 0.65, recon  # Gaussian waves cannot fit baseline/noise


def _model(**overrides) -> EPPrior:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from bioexp.train import CONF_DIR

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=["model=ep_prior", "model.encoder.arch=xresnet1d18",
                                          "model.scheduler=null", *[f"model.{k}={v}" for k, v in overrides.items()]])
    config = OmegaConf.to_container(cfg.model, resolve=True)
    config.pop("_target_")
    return EPPrior(**config)


def test_ep_weight_warms_up_and_the_ablation_does_not_optimise_it(monkeypatch):
    torch.manual_seed(0)
    model, ablation = _model(), _model(lambda_ep=0.0)
    ablation.load_state_dict(model.state_dict())
    model.eval(), ablation.eval()  # no dropout: the two objectives see identical latents
    x = torch.randn(4, 12, 100)
    for epoch, weight in ((0, 0.0), (5, 0.05), (10, 0.1), (50, 0.1)):
        monkeypatch.setattr(EPPrior, "current_epoch", property(lambda self, e=epoch: e))
        assert model.ep_weight == pytest.approx(weight)
        full = model._losses(x, torch.Generator().manual_seed(1))
        without = ablation._losses(x, torch.Generator().manual_seed(1))
        torch.testing.assert_close(full["ep_loss"], without["ep_loss"])
        torch.testing.assert_close(full["loss"] - without["loss"], weight * full["ep_loss"])


def test_d_latent_resizes_encoder_decoder_and_projection():
    model = _model(**{"encoder.latent_dims": "null", "encoder.d_latent": 64})
    assert model.encoder.latent_dims == {"P": 64, "QRS": 64, "T": 64, "HRV": 64}
    x = torch.randn(2, 12, 100)
    assert model.eval().embed(x).shape == (2, 256)
    x_hat, params = model.decoder(model(x), 100)
    assert x_hat.shape == (2, 12, 100) and set(params) == {"P", "QRS", "T"}
