"""Multirun machinery: the resumable Optuna sweeper (on a tiny Hydra app) and the seed summary."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf
from optuna.trial import TrialState

from bioexp.utils.collect import SeedSummary

# Objective (x - 0.3)^2; the n-th job (counted in a file, 1-based) can be told to raise, return NaN or
# kill the whole sweep process (the basic launcher runs jobs in-process), as a crash or Ctrl-C would.
APP = '''
import math, os, time
from pathlib import Path
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    counter = Path(cfg.counter)
    n = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(n))
    time.sleep(cfg.sleep)
    if n in cfg.kill_at:
        os._exit(3)
    if n in cfg.raise_at:
        raise RuntimeError("out of memory (simulated)")
    return float("nan") if n in cfg.nan_at else (cfg.x - 0.3) ** 2

main()
'''
CONFIG = '''
defaults:
  - override hydra/sweeper: optuna
  - override hydra/sweeper/sampler: random
  - _self_
x: 0.0
counter: {counter}
sleep: 0.0
kill_at: []
raise_at: []
nan_at: []
hydra:
  mode: MULTIRUN
  sweep:
    dir: {root}/multirun/${{now:%H-%M-%S-%f}}
  sweeper:
    _target_: hydra_plugins.bioexp_sweeper.resumable_optuna.ResumableOptunaSweeper
    storage: sqlite:///{root}/optuna/study.db
    study_name: toy
    n_trials: 5
    n_jobs: 1
    max_failure_rate: 1.0
    sampler: {{seed: {seed}}}
    params:
      x: interval(0, 1)
'''


def _app(root: Path, seed: int = 0) -> Path:
    (root / "app.py").write_text(APP)
    (root / "app.yaml").write_text(textwrap.dedent(CONFIG.format(root=root, counter=root / "count", seed=seed)))
    return root


def _sweep(root: Path, *overrides: str, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    cmd = [sys.executable, str(root / "app.py"), *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=120)


def _trials(root: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="toy", storage=f"sqlite:///{root}/optuna/study.db").get_trials()


def test_failed_and_nan_trials_are_recorded_and_the_sweep_completes(tmp_path):
    root = _app(tmp_path)
    result = _sweep(root, "raise_at=[2]", "nan_at=[4]")
    assert result.returncode == 0, result.stderr[-2000:]
    trials = _trials(root)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                         TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["fail_reason"] == "RuntimeError: out of memory (simulated)"
    assert trials[3].user_attrs["fail_reason"] == "non-finite objective nan"
    log = result.stdout + result.stderr
    assert "Trial 1 failed (RuntimeError: out of memory (simulated)); the sweep goes on" in log
    results = yaml.safe_load(next(root.glob("multirun/*/optimization_results.yaml")).read_text())
    best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert results["n_complete"] == 3 and results["n_failed"] == 2
    assert results["best_value"] == pytest.approx(best.value) and results["best_params"] == best.params


def test_an_interrupted_sweep_resumes_to_exactly_n_trials(tmp_path):
    root = _app(tmp_path)
    killed = _sweep(root, "kill_at=[3]")
    assert killed.returncode == 3
    assert [t.state for t in _trials(root)] == [TrialState.COMPLETE] * 2 + [TrialState.RUNNING]
    resumed = _sweep(root)  # the same command again
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    trials = _trials(root)
    assert trials[2].state == TrialState.FAIL and trials[2].user_attrs["fail_reason"] == "interrupted"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 5 and len(trials) == 6
    assert "2 of 5 trials done or running" in resumed.stdout + resumed.stderr
    again = _sweep(root)  # nothing missing: no new trial
    assert again.returncode == 0 and len(_trials(root)) == 6


def test_two_workers_share_one_study(tmp_path):
    root = _app(tmp_path)
    (root / "app.yaml").write_text((root / "app.yaml").read_text().replace("n_trials: 5", "n_trials: 8"))
    workers = [_sweep(root, "sleep=0.5", f"counter={root}/count{i}", f"hydra.sweeper.sampler.seed={i}", wait=False)
               for i in range(2)]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0, out[-2000:]
    trials = _trials(root)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 8
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both did some of the work
    assert sum(int((root / f"count{i}").read_text()) for i in range(2)) == 8  # and none was run twice


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"metrics": metrics}))


def test_seed_summary_gives_mean_and_std_over_seeds_per_configuration(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["seed=1", "model.lr=0.1"], {"test/auroc": 0.80, "val/loss": 0.5})
    _job(sweep, 1, ["seed=2", "model.lr=0.1"], {"test/auroc": 0.90, "val/loss": 0.3})
    _job(sweep, 2, ["seed=1", "model.lr=0.01"], {"test/auroc": 0.70, "val/loss": 0.6})
    _job(sweep, 3, ["seed=2", "model.lr=0.01"], None)  # failed job: no metrics.json
    _job(sweep, 10, ["seed=3", "model.lr=0.01"], {"test/auroc": 0.74, "val/loss": 0.4})
    with caplog.at_level("INFO", logger="bioexp.utils.collect"):
        SeedSummary().on_multirun_end(config=OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    table = pd.read_csv(sweep / "seed_summary.csv", index_col="config")
    assert table.index.tolist() == ["model.lr=0.1", "model.lr=0.01"]
    assert table.loc["model.lr=0.1", "test/auroc_mean"] == pytest.approx(0.85)
    assert table.loc["model.lr=0.1", "test/auroc_std"] == pytest.approx(0.0707107)  # sample std (ddof=1)
    assert table.loc["model.lr=0.01", "val/loss_mean"] == pytest.approx(0.5)
    assert table["n_seeds"].tolist() == [2, 2]
    markdown = (sweep / "seed_summary.md").read_text()
    assert "| test/auroc | 0.85 ± 0.071 | 0.72 ± 0.028 |" in markdown
    assert markdown in caplog.text  # the same table is printed


def test_seed_summary_is_silent_without_a_seed_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    _job(sweep, 0, ["model.lr=0.1"], {"test/auroc": 0.8})
    _job(sweep, 1, ["model.lr=0.2"], {"test/auroc": 0.9})
    assert SeedSummary().summarize(sweep) is None and not (sweep / "seed_summary.csv").exists()


def test_joblib_launcher_runs_a_batch_of_trials_in_parallel_processes(tmp_path):
    root = _app(tmp_path)
    config = (root / "app.yaml").read_text().replace("n_jobs: 1", "n_jobs: 2").replace(
        "  - _self_", "  - override hydra/launcher: joblib\n  - _self_")
    (root / "app.yaml").write_text(config)
    result = _sweep(root, "hydra.sweeper.n_trials=4", "hydra.launcher.n_jobs=2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    assert [t.state for t in _trials(root)] == [TrialState.COMPLETE] * 4


def _family_args(family: str, tmp: Path, synth_root: Path) -> list[str]:
    """A tiny but real run of each experiment family (the overrides its own tests use)."""
    from tests.conftest import data_overrides

    if family == "ep_prior":
        return ["experiment=ep_prior", *data_overrides(synth_root, tmp / "c"), "model.encoder.arch=xresnet1d18",
                "callbacks.embedding_probe.ks=[10]", "callbacks.embedding_probe.seeds=[0]", "trainer=cpu"]
    if family == "vitaldb":
        from tests.test_vitaldb_experiments import SMALL_TTM, _data

        return ["experiment=vitaldb_msm", *_data(tmp), *SMALL_TTM]
    if family == "cardiac":
        from bioexp.data.synth.cardiac_us import generate_cardiac_us
        from tests.test_cardiac import _data as cardiac_data

        return cardiac_data(generate_cardiac_us(tmp / "processed", patients=8, transitions=6, size=64, seed=0))
    from tests.test_bvae_cli import TINY

    return ["experiment=bvae", *TINY]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ep_prior", "vitaldb", "cardiac", "bvae"])  # csi: tests/test_csi.py
def test_each_familys_optuna_sweep_runs_three_trials(tmp_path, synth_root, family):
    from tests.conftest import run_cli

    result = run_cli(["-m", *_family_args(family, tmp_path, synth_root), f"hparams_search={family}_optuna",
                      "hydra.sweeper.n_trials=3", "debug=limit", "trainer.max_epochs=1", "print_config=false",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["n_complete"] == 3 and results["n_failed"] == 0, results
    assert (tmp_path / "optuna" / f"{family}_optuna.db").is_file()


def test_opening_a_study_retries_while_another_worker_creates_the_schema(tmp_path, monkeypatch):
    """The losing worker of the schema-creation race gets an IntegrityError once; it retries and opens the study."""
    from sqlalchemy.exc import IntegrityError

    from bioexp import sweep

    real, calls = optuna.create_study, []

    def racing(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            raise IntegrityError("INSERT INTO alembic_version", {}, Exception("UNIQUE constraint failed"))
        return real(**kwargs)

    monkeypatch.setattr(sweep.optuna, "create_study", racing)
    monkeypatch.setattr(sweep.time, "sleep", lambda seconds: None)
    study = sweep.open_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db", load_if_exists=True)
    assert study.study_name == "s" and calls == ["s", "s"]

    def broken(**kwargs):
        calls.append(kwargs["study_name"])
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed"))

    calls.clear()
    monkeypatch.setattr(sweep.optuna, "create_study", broken)
    with pytest.raises(IntegrityError):  # a storage that stays broken is not retried for ever
        sweep.open_study(study_name="s", storage=f"sqlite:///{tmp_path}/s.db")
    assert len(calls) == 5
