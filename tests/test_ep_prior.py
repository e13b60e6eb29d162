"""EP-Prior study: the experiments train end to end; objective, warm-up, checkpoints, evaluation, the recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bioexp.evaluate import evaluate
from bioexp.nets.ep_prior import WAVES
from bioexp.tasks.ep_prior import EPPrior
from bioexp.train import train
from tests.conftest import compose_cfg, data_overrides, run_cli

SMALL = ["model.encoder.arch=xresnet1d18", "++model.encoder.stem_widths=[8,8,16]",
         "++model.encoder.block_widths=[16,16,32,32]", "trainer=cpu", "callbacks.rich_progress_bar=null",
         "callbacks.embedding_probe.ks=[10]", "callbacks.embedding_probe.seeds=[0]"]


def _run(tmp_path: Path, synth_root: Path, experiment: str, *overrides: str) -> tuple[dict, Path]:
    out = tmp_path / experiment
    cfg = compose_cfg([f"experiment={experiment}", *data_overrides(synth_root, tmp_path / "cache"), *SMALL,
                       *overrides], out)
    return train(cfg)[0], out


@pytest.mark.parametrize("experiment", ["ep_prior", "ep_prior_baseline", "ep_prior_ablation", "ep_prior_no_contrast",
                                        "ep_prior_beats"])
def test_each_study_experiment_trains_tests_and_evaluates(tmp_path, synth_root, experiment):
    summary, out = _run(tmp_path, synth_root, experiment, "debug=limit", "trainer.max_epochs=2")
    metrics = summary["metrics"]
    length = 100 if experiment == "ep_prior_beats" else 1000  # beat windows vs whole 10-s records at 100 Hz
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["input_length"] in (None, length)
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
    _, out = _run(tmp_path, synth_root, "ep_prior_beats", "debug=overfit", "trainer.max_epochs=20",
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
    config.pop("compile")  # run-time only: the runner hands it to set_accel, not the task
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
        full = model._losses(x, generator=torch.Generator().manual_seed(1))
        without = ablation._losses(x, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(full["ep_loss"], without["ep_loss"])
        torch.testing.assert_close(full["loss"] - without["loss"], weight * full["ep_loss"])


def test_d_latent_resizes_encoder_decoder_and_projection():
    model = _model(**{"encoder.latent_dims": "null", "encoder.d_latent": 64})
    assert model.encoder.latent_dims == {"P": 64, "QRS": 64, "T": 64, "HRV": 64}
    x = torch.randn(2, 12, 100)
    assert model.eval().embed(x).shape == (2, 256)
    x_hat, params = model.decoder(model(x), 100)
    assert x_hat.shape == (2, 12, 100) and set(params) == {"P", "QRS", "T"}


def test_validation_loss_is_the_published_one():
    """val/loss = lambda_recon * recon + lambda_ep * EP: full EP weight from epoch 0, no augmented views."""
    torch.manual_seed(0)
    model = _model(lambda_recon=0.5, lambda_ep=0.3).eval()
    x = torch.randn(3, 12, 1000)
    assert model.current_epoch == 0 and model.ep_weight == 0.0  # training would still be warming up
    val = model._losses(x, train=False)
    assert "contrast_loss" not in val and val["ep_loss"] > 0
    torch.testing.assert_close(val["loss"], 0.5 * val["recon_loss"] + 0.3 * val["ep_loss"])
    train = model._losses(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(train["loss"], 0.5 * train["recon_loss"] + 0.1 * train["contrast_loss"])


def test_model_ep_prior_on_ptbxl_is_the_published_recipe(tmp_path):
    """`python -m bioexp.train model=ep_prior data=ptbxl --cfg job` shows the guide's recipe, nothing to add."""
    import yaml

    result = run_cli(["model=ep_prior", "data=ptbxl", "--cfg", "job", "--resolve"], cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    data, model, callbacks = cfg["data"], cfg["model"], cfg["callbacks"]
    assert (data["crop_seconds"], data["eval_crop"], data["window_baseline"], data["normalize"]) == (
        None, False, "none", "record")  # whole records, per-record per-lead z-score
    assert data["keep_unlabelled"] is True and (data["batch_size"], data["num_workers"]) == (64, 4)
    assert cfg["trainer"]["max_epochs"] == 100 and cfg["monitor"] == "val/loss" and cfg["monitor_mode"] == "min"
    assert callbacks["early_stopping"]["patience"] == 20 and callbacks["model_checkpoint"]["save_top_k"] == 3
    assert {"embedding_probe", "interval_agreement", "reconstruction_plot"} <= set(callbacks)
    assert callbacks["embedding_probe"]["ks"] == [10, 50, 100, 500]
    assert model["optimizer"] == {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 1e-4}
    assert model["scheduler"] == {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 100,
                                  "eta_min": 1e-6, "interval": "epoch"}
    assert (model["lambda_recon"], model["lambda_ep"], model["lambda_contrastive"], model["ep_warmup_epochs"]) == (
        1.0, 0.1, 0.1, 10)
    assert model["augment"] == {"max_shift": 50, "scale": [0.8, 1.2], "noise_std": 0.05, "lead_dropout": 0.1}
    assert model["constraints"] == {"pr_min": 0.04, "qt_min": 0.08, "sharpness": 1.0, "detach_gates": False,
                                    "order_gate": "all", "relative_sigma_sharpness": False,
                                    "sigma_bounds": {"P": [0.003, 0.025], "QRS": [0.002, 0.02], "T": [0.005, 0.04]}}
    assert model["encoder"]["arch"] == "xresnet1d50" and model["encoder"]["latent_dims"] == {
        "P": 32, "QRS": 128, "T": 64, "HRV": 32}
    decoder = model["decoder"]
    assert decoder["heads"] == "separate" and decoder["gate_min"] == 0.1 and decoder["output_scale_init"] == 15.0
    sigmoid = lambda b: 1 / (1 + math.exp(-b))  # noqa: E731  (the published last-layer biases)
    assert decoder["init_tau"] == pytest.approx({w: sigmoid(b) for w, b in zip(WAVES, (-1.5, -0.5, 0.5), strict=True)},
                                                abs=1e-6)
    assert decoder["init_sigma"] == pytest.approx(
        {w: math.log1p(math.exp(b)) + 0.005 for w, b in zip(WAVES, (-2.0, -2.5, -1.5), strict=True)}, abs=1e-6)
    assert decoder["init_gate"] == pytest.approx(
        {w: 0.1 + 0.9 * sigmoid(b) for w, b in zip(WAVES, (2.0, 3.0, 2.0), strict=True)}, abs=1e-6)
