"""DDP on CPU (``trainer=ddp_sim``: 2 spawned processes): unused parameters, one set of outputs, every study,
and test metrics that equal one process's."""

from __future__ import annotations

import json

import pytest

from bioexp.gpu_check import STUDIES, RunSpec, prepare, run_one
from bioexp.train import train
from tests.conftest import compose_cfg, data_overrides

SHORT = ["callbacks=none", "++callbacks.rich_progress_bar=null", "++trainer.max_steps=3", "trainer.max_epochs=3",
         "++trainer.limit_val_batches=1", "test=false", "optimized_metric=null", "print_config=false", "logger=csv"]


def test_ddp_trains_ep_prior_without_contrast_whose_projection_head_gets_no_gradient(tmp_path, synth_root):
    """Plain DDP fails on the 2nd step here ("Expected to have finished reduction"); the task asks for
    find_unused_parameters. One run dir, one metrics.json, one metrics.csv."""
    out = tmp_path / "run"
    cfg = compose_cfg(["experiment=ep_prior_no_contrast", *data_overrides(synth_root, tmp_path / "cache"),
                       "model.encoder.arch=xresnet1d18", "data.batch_size=8", "trainer=ddp_sim", *SHORT], out)
    summary, _ = train(cfg)
    assert summary["metrics"]["train/recon_loss"] > 0
    assert (out / "metrics.json").is_file() and len(list(out.rglob("metrics.csv"))) == 1


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_every_study_trains_under_ddp_sim(tmp_path, study):
    root = tmp_path.resolve()
    assert prepare([study], root, "cpu") == ""
    row = run_one(RunSpec(study, "bf16", devices=2), root, "cpu", 3, 1, 0, timeout=1200)
    assert row["ok"], row.get("error")
    assert row["world_size"] == 2 and row["measured_steps"] == 2
    out = root / "runs" / f"{study}-bf16-ddp"
    assert len(list(out.rglob("metrics.csv"))) == 1 and len(list(out.rglob("timing.json"))) == 1


@pytest.mark.slow
def test_ddp_test_metrics_equal_one_process(tmp_path, synth_root):
    """The same weights (seeded init, no training) tested on 1 and on 2 processes: the loss is averaged over
    ranks weighted by batch size, AUROC gathers all predictions, so both give the same numbers."""
    from tests.conftest import TINY_NET

    results = {}
    for trainer in ("cpu", "ddp_sim"):
        out = tmp_path / trainer
        cfg = compose_cfg([*data_overrides(synth_root, tmp_path / "cache"), *TINY_NET, f"trainer={trainer}",
                           "train=false", "test=true", "callbacks=none", "optimized_metric=null", "logger=csv"], out)
        train(cfg)
        results[trainer] = json.loads((out / "metrics.json").read_text())["metrics"]
    assert results["cpu"]["test/auroc"] == pytest.approx(results["ddp_sim"]["test/auroc"], abs=1e-6)
    assert results["cpu"]["test/loss"] == pytest.approx(results["ddp_sim"]["test/loss"], rel=1e-5)
