"""End to end through ``bioexp.train.train`` on a small synthetic PTB-XL, with tiny networks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bioexp.evaluate import evaluate
from bioexp.tasks.classifier import MultiLabelClassifier
from bioexp.train import train
from tests.conftest import TINY_NET, compose_cfg, data_overrides


def _run(tmp_path: Path, synth_root: Path, *overrides: str, name: str = "run") -> tuple[dict, Path]:
    out = tmp_path / name
    cfg = compose_cfg([*data_overrides(synth_root, tmp_path / "cache"), *TINY_NET, "callbacks.rich_progress_bar=null",
                       *overrides], out)
    summary, _ = train(cfg)
    return summary, out


@pytest.mark.parametrize("trainer", ["cpu", "bf16", "ddp_sim"])
def test_fast_dev_run_on_each_cpu_trainer_overlay(tmp_path: Path, synth_root: Path, trainer: str):
    summary, out = _run(tmp_path, synth_root, f"trainer={trainer}", "debug=fdr", "logger=csv")
    assert {"train/loss_epoch", "val/loss", "test/loss", "test/auroc"} <= set(summary["metrics"])
    assert all(np.isfinite(v).all() for v in summary["metrics"].values())  # no NaN (scalars and CI pairs)
    assert json.loads((out / "metrics.json").read_text())["metrics"] == summary["metrics"]  # JSON floats round-trip
    assert (out / "resolved_config.yaml").is_file()


def test_supervised_xresnet_learns_synthetic_ptbxl(tmp_path: Path, synth_root: Path):
    summary, out = _run(tmp_path, synth_root, "experiment=ptbxl_xresnet1d50", *TINY_NET, "trainer=cpu",
                        "trainer.max_epochs=8", "data.batch_size=32")
    metrics = summary["metrics"]
    assert metrics["val/auroc"] > 0.75 and metrics["test/auroc"] > 0.75, metrics
    assert summary["optimized_metric"]["name"] == "val/auroc"
    # the benchmark's protocol: the final epoch's weights are tested; bootstrap intervals in metrics.json
    assert Path(summary["best_checkpoint"]).name == "epoch_007.ckpt"
    saved = json.loads((out / "metrics.json").read_text())["metrics"]
    lo, hi = saved["test/auroc_ci95"]
    lo90, hi90 = saved["test/auroc_ci90"]
    assert 0.5 < lo <= lo90 < hi90 <= hi <= 1.0
    assert metrics["test/n_unlabelled"] == 0 and metrics["test/n_labelled"] > 0
    history = pd.read_csv(out / "csv" / "metrics.csv")
    train_loss = history["train/loss_epoch"].dropna().to_numpy()
    assert train_loss[-1] < train_loss[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert (out / "plots" / "learning_curves.png").stat().st_size > 10_000
    assert (out / "config_tree.log").is_file() or not OmegaConf.load(out / "resolved_config.yaml").print_config


def test_resume_from_last_ckpt_continues_exactly(tmp_path: Path, synth_root: Path):
    common = ["trainer=cpu", "callbacks.early_stopping=null", "model.optimizer.lr=3e-3", "data.crop_seconds=2.5"]
    straight, _ = _run(tmp_path, synth_root, *common, "trainer.max_epochs=4", name="straight")
    _, first = _run(tmp_path, synth_root, *common, "trainer.max_epochs=2", name="first")
    resumed, second = _run(tmp_path, synth_root, *common, "trainer.max_epochs=4",
                           f"ckpt_path={first / 'checkpoints' / 'last.ckpt'}", name="second")
    a_ckpt = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    b_ckpt = torch.load(second / "checkpoints" / "last.ckpt", weights_only=True)
    assert (b_ckpt["epoch"], b_ckpt["global_step"]) == (a_ckpt["epoch"], a_ckpt["global_step"])
    a, b = a_ckpt["state_dict"], b_ckpt["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert resumed["metrics"]["val/loss"] == straight["metrics"]["val/loss"]


def test_checkpoint_loads_weights_only_and_evaluate_reproduces_test_metrics(tmp_path: Path, synth_root: Path):
    summary, out = _run(tmp_path, synth_root, "trainer=cpu", "debug=limit", "monitor=val/auroc", "monitor_mode=max")
    best = Path(summary["best_checkpoint"])
    model = MultiLabelClassifier.load_from_checkpoint(best, map_location="cpu", weights_only=True)
    assert model.hparams.num_classes == 5 and model.hparams.net["arch"] == "xresnet1d18"
    cfg = compose_cfg([f"ckpt_path={best}", "logger=csv", "trainer=cpu", "+trainer.limit_test_batches=2"],
                      tmp_path / "eval", config_name="eval")
    result = evaluate(cfg)
    assert result["metrics"]["test/auroc"] == pytest.approx(summary["metrics"]["test/auroc"], abs=1e-6)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["checkpoint"] == str(best)
    # experiment= settings (here: train-set normalisation) override the checkpoint's data settings.
    cfg = compose_cfg([f"ckpt_path={best}", "experiment=ptbxl_xresnet1d50", "trainer=cpu",
                       "+trainer.limit_test_batches=2"], tmp_path / "eval2", config_name="eval")
    changed = evaluate(cfg)["metrics"]["test/auroc"]
    assert 0.0 <= changed <= 1.0 and changed != pytest.approx(result["metrics"]["test/auroc"], abs=1e-9)


def test_wandb_offline_run_holds_config_metrics_and_images(tmp_path: Path, synth_root: Path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, out = _run(tmp_path, synth_root, "trainer=cpu", "debug=limit", "logger=many", "tags=[smoke,wandb]")
    from bioexp.utils.run import finish_wandb

    finish_wandb()
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # wandb 0.31 keeps an offline run's config, history and media in its transaction log (what `wandb sync` uploads).
    stream = next(runs[0].glob("*.wandb")).read_bytes()
    for expected in (b"label_set", b"superdiagnostic", b"xresnet1d18", b"val/loss", b"val/auroc", b"test/auroc",
                     b"plots/learning_curves", b"smoke"):
        assert expected in stream, expected
    assert list((runs[0] / "files" / "media" / "images").glob("plots/learning_curves*.png"))
    assert b"best/val/loss" in stream  # the best epoch's value of the optimised metric, in the run summary
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tensorboard")).Reload()
    assert "final/test/auroc" in events.Tags()["scalars"]  # with the run's hyperparameters, for the hparams tab
    assert events.PluginTagToContent("hparams")


def test_unreachable_wandb_server_falls_back_to_offline(tmp_path: Path):
    # A fresh process: W&B keeps process-wide state (mode, settings) from any earlier run in this one.
    script = f"""
from omegaconf import OmegaConf
from bioexp.utils.dashboards import start_loggers
group = OmegaConf.create({{"wandb": {{"_target_": "lightning.pytorch.loggers.WandbLogger", "save_dir": "{tmp_path}",
                                     "offline": False, "project": "bioexp"}}}})
[logger] = start_loggers(group)
assert logger._offline
logger.log_metrics({{"val/loss": 1.0}})
logger.experiment.finish()
"""
    env = {**os.environ, "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_INIT_TIMEOUT": "3",
           "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "W&B unreachable" in result.stderr and "wandb sync" in result.stderr
    assert list((tmp_path / "wandb").glob("offline-run-*"))
