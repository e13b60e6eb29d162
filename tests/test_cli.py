"""The entry points as a user runs them: composition, clear one-line errors, Optuna sweeps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from bioexp.train import CONF_DIR
from tests.conftest import TINY_NET, data_overrides, run_cli

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (Path(CONF_DIR) / "trainer").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment: str):
    from bioexp.utils.run import fill_dims

    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"experiment={experiment}", "paths.root_dir=/x", "paths.output_dir=/x/out"])
    data_dims = [k for k in cfg.model.keys() if OmegaConf.is_missing(cfg.model, k)]  # noqa: SIM118 (`in` skips ???)
    fill_dims(cfg.model, dict.fromkeys(data_dims, 1))  # stand-ins for what the datamodule says
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert resolved["task_name"] == experiment
    # The PTB-XL benchmark tests its final weights (no best-epoch selection); every other recipe its best epoch.
    final_weights = experiment.startswith("ptbxl_")
    assert resolved["callbacks"]["model_checkpoint"]["monitor"] == (None if final_weights else resolved["monitor"])


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_overlay_composes(trainer: str):
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"trainer={trainer}", "paths.output_dir=/x/out"])
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    expected = {"amp16": "16-mixed", "bf16": "bf16-mixed"}.get(trainer, "32-true")
    assert cfg.trainer.precision == expected


def test_cfg_job_prints_the_composed_config(tmp_path: Path):
    result = run_cli(["experiment=ptbxl_xresnet1d101", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cfg = yaml.safe_load(result.stdout)
    assert cfg["model"]["net"]["arch"] == "xresnet1d101" and cfg["data"]["crop_seconds"] == 2.5


def test_unknown_group_option_lists_the_valid_ones(tmp_path: Path):
    result = run_cli(["trainer=tpu"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'trainer/tpu'" in result.stderr
    assert all(f"\t{t}\n" in result.stderr for t in TRAINERS)
    assert "Traceback" not in result.stderr


def _one_line_error(result) -> str:
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("bioexp: error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def test_missing_ptbxl_says_how_to_get_it(tmp_path: Path):
    line = _one_line_error(run_cli(["data=ptbxl", f"data.root={tmp_path / 'nope'}"], cwd=tmp_path))
    assert "ptbxl_database.csv is missing" in line
    assert "aws s3 sync --no-sign-request s3://physionet-open/ptb-xl/1.0.3/" in line and "data=ptbxl_synth" in line


def test_unknown_label_set_lists_the_valid_ones(tmp_path: Path, synth_root: Path):
    line = _one_line_error(run_cli([*data_overrides(synth_root, tmp_path / "c"), "data.label_set=bogus"], cwd=tmp_path))
    assert "unknown data.label_set 'bogus'; choose one of all, diagnostic, subdiagnostic" in line


def test_missing_records_are_skipped_and_counted_then_fail_beyond_the_limit(tmp_path: Path, synth_root: Path):
    root = tmp_path / "ptbxl"
    shutil.copytree(synth_root, root, ignore=shutil.ignore_patterns(".bioexp_cache"))
    dats = sorted(root.glob("records100/*/*.dat"))
    dats[0].unlink()
    with open(dats[1], "r+b") as f:
        f.truncate(1000)
    args = [*data_overrides(root, tmp_path / "c"), *TINY_NET, "debug=fdr", "trainer=cpu"]
    ok = run_cli(args, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "skipping 2 of 400 records" in ok.stdout + ok.stderr
    line = _one_line_error(run_cli([*args, "data.max_missing_frac=0.001"], cwd=tmp_path))
    assert "2 of 400 PTB-XL records are missing or unreadable" in line and "data.max_missing_frac" in line


def test_nan_loss_stops_with_a_clear_message_and_keeps_checkpoints(tmp_path: Path, synth_root: Path):
    run_dir = tmp_path / "run"
    result = run_cli([*data_overrides(synth_root, tmp_path / "c"), *TINY_NET, "trainer=cpu", "trainer.max_epochs=3",
                      "model.optimizer.lr=1e30", "callbacks.early_stopping=null", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    line = _one_line_error(result)
    assert "training loss became nan" in line and "model.optimizer.lr" in line
    assert (run_dir / ".hydra" / "config.yaml").is_file()


def test_shipped_ptbxl_optuna_sweep_runs_end_to_end(tmp_path: Path, synth_root: Path):
    result = run_cli(["-m", "experiment=ptbxl_xresnet1d50", "hparams_search=ptbxl_optuna",
                      *data_overrides(synth_root, tmp_path / "c"), *TINY_NET, "trainer=cpu", "debug=limit",
                      "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.optimizer.lr", "model.optimizer.weight_decay"}  # batch size is fixed
    runs = sorted((tmp_path / "sweep").glob("[0-9]*/metrics.json"))
    values = [json.loads(p.read_text())["optimized_metric"]["value"] for p in runs]
    assert len(runs) == 2 and best["best_value"] == pytest.approx(max(values))


def test_optuna_sweep_runs_and_survives_failing_and_nan_trials(tmp_path: Path, synth_root: Path):
    """Trials with a good lr, an lr that makes the loss NaN and an invalid lr that raises: the sweep completes.

    (A seeded random sampler, not the grid one: optuna 2.10's GridSampler crashes the sweeper when the
    last grid point fails.)
    """
    search = tmp_path / "conf" / "hparams_search"
    search.mkdir(parents=True)
    (search / "failing.yaml").write_text("""# @package _global_
defaults:
  - override /hydra/sweeper: bioexp_optuna
  - override /hydra/sweeper/sampler: random
optimized_metric: val/auroc
hydra:
  mode: MULTIRUN
  sweeper:
    direction: maximize
    max_failure_rate: 1.0
    sampler:
      seed: 2   # draws -1.0, 0.003, 1e30: each case once
    params:
      model.optimizer.lr: choice(0.003, 1e30, -1.0)
""")
    result = run_cli(["-m", "hparams_search=failing", f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
                      *data_overrides(synth_root, tmp_path / "c"), *TINY_NET, "trainer=cpu", "debug=limit",
                      "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "failed (NonFiniteError: training loss became nan" in log
    assert "model.optimizer.lr must be a number > 0, got -1.0" in log and log.count("; the sweep goes on") == 2
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_params"] == {"model.optimizer.lr": 0.003} and best["n_failed"] == 2
    assert 0.0 <= best["best_value"] <= 1.0
    assert len(list((tmp_path / "sweep").glob("[0-9]*/metrics.json"))) == 1


@pytest.mark.parametrize(("env", "netrc", "offline"), [
    ({}, "", True),
    ({"WANDB_API_KEY": "k"}, "", False),
    ({"WANDB_MODE": "online"}, "", False),
    ({"WANDB_API_KEY": "k", "WANDB_MODE": "offline"}, "", True),
    ({}, "machine api.wandb.ai\n  login user\n  password secret\n", False),
])
def test_wandb_is_offline_unless_a_key_is_configured(monkeypatch, tmp_path: Path, env: dict, netrc: str,
                                                      offline: bool):
    from bioexp.utils.resolvers import wandb_offline

    for key in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path))
    if netrc:
        (tmp_path / ".netrc").write_text(netrc)
        (tmp_path / ".netrc").chmod(0o600)
    assert wandb_offline() is offline


@pytest.mark.slow
@pytest.mark.parametrize("trainer", [["trainer=ddp_sim"],  # spawned ranks
                                     ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2",
                                      "trainer.sync_batchnorm=false"]])  # re-launched ranks, as torchrun/SLURM do
def test_ddp_writes_one_set_of_outputs_from_rank_zero(tmp_path: Path, synth_root: Path, trainer: list[str]):
    result = run_cli([*data_overrides(synth_root, tmp_path / "c"), *TINY_NET, *trainer, "debug=limit",
                      "trainer.max_epochs=2", "task_name=ddp"], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    [run] = (tmp_path / "outputs" / "ddp").iterdir()  # one run dir, not one per rank
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.ckpt", "last.ckpt"]
    assert [p.name for p in (run / "csv").glob("metrics*.csv")] == ["metrics.csv"]
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    assert {"val/auroc", "test/auroc"} <= set(metrics)
