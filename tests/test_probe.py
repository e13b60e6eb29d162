"""Frozen-embedding evaluation: linear probe, few-shot protocol, comparison table, and the multirun collector."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from bioexp.probe import comparison_table, few_shot_indices, few_shot_table, linear_probe
from bioexp.utils.collect import CollectResults

N_CLASSES, DIM = 4, 16
TABLE_COLUMNS = ["k", "n_train_mean", "auroc_mean", "auroc_std", "auprc_mean", "auprc_std"]


def embeddings(n: int, seed: int, informative: bool = True, signal: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Multi-hot labels (prevalence 0.3) and Gaussian embeddings whose mean is a fixed direction per present label."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, N_CLASSES)) < 0.3).astype(np.int64)
    directions = np.random.default_rng(1234).normal(size=(N_CLASSES, DIM))  # shared by train and test
    x = rng.normal(size=(n, DIM))
    if informative:
        x += signal * y @ directions
    return x, y


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (*embeddings(400, seed=0), *embeddings(300, seed=1))


def test_probe_informative_vs_random(data) -> None:
    train_x, train_y, test_x, test_y = data
    good = linear_probe(train_x, train_y, test_x, test_y)
    assert set(good) == {"auroc", "auprc", "n_classes_scored"}
    assert good["auroc"] > 0.9 and good["auprc"] > 0.7
    assert good["n_classes_scored"] == N_CLASSES

    noise_train, _ = embeddings(400, seed=0, informative=False)
    noise_test, _ = embeddings(300, seed=1, informative=False)
    chance = linear_probe(noise_train, train_y, noise_test, test_y)
    assert 0.35 < chance["auroc"] < 0.65
    assert chance["auprc"] < good["auprc"] - 0.3


def test_probe_exact_values_and_per_class() -> None:
    """Feature c is label c plus small noise: every class is perfectly separable, so AUROC = AUPRC = 1 exactly."""
    rng = np.random.default_rng(0)
    y = (rng.random((120, 3)) < 0.4).astype(int)
    x = y + 0.01 * rng.normal(size=y.shape)
    out = linear_probe(x[:80], y[:80], x[80:], y[80:], class_names=["NORM", "MI", "STTC"])
    assert out == {"auroc/NORM": 1.0, "auroc/MI": 1.0, "auroc/STTC": 1.0, "auroc": 1.0, "auprc": 1.0,
                   "n_classes_scored": 3.0}


def test_probe_uses_training_statistics(data) -> None:
    """Standardising with the training set's statistics makes the probe blind to a per-feature affine change."""
    train_x, train_y, test_x, test_y = data
    scale, shift = np.linspace(0.1, 100.0, DIM), np.linspace(-50.0, 50.0, DIM)
    plain = linear_probe(train_x, train_y, test_x, test_y)
    moved = linear_probe(train_x * scale + shift, train_y, test_x * scale + shift, test_y)
    assert moved == pytest.approx(plain, abs=1e-6)


def test_probe_class_without_training_positives(data) -> None:
    train_x, train_y, test_x, test_y = data
    train_y = train_y.copy()
    train_y[:, 2] = 0
    out = linear_probe(train_x, train_y, test_x, test_y, class_names=["a", "b", "c", "d"])
    assert out["n_classes_scored"] == 3
    assert np.isnan(out["auroc/c"])
    scored = [out[f"auroc/{name}"] for name in "abd"]
    assert out["auroc"] == pytest.approx(np.mean(scored))
    assert out["auroc"] > 0.9

    none_scored = linear_probe(train_x, np.zeros_like(train_y), test_x, test_y)
    assert none_scored["n_classes_scored"] == 0 and np.isnan(none_scored["auroc"]) and np.isnan(none_scored["auprc"])


def test_probe_rejects_mismatched_shapes(data) -> None:
    train_x, train_y, test_x, test_y = data
    with pytest.raises(ValueError, match="disagree"):
        linear_probe(train_x, train_y, test_x[:, :4], test_y)
    with pytest.raises(ValueError, match="multi-hot"):
        linear_probe(train_x, train_y[:, 0], test_x, test_y)


def test_few_shot_indices_single_label() -> None:
    """One label per row: no overlap between classes, so exactly k per class (all 3 of the rare class)."""
    labels = np.repeat([0, 1, 2], [50, 20, 3])
    y = np.eye(3, dtype=int)[labels]
    idx = few_shot_indices(y, k=10, seed=0)
    assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
    assert y[idx].sum(axis=0).tolist() == [10, 10, 3]
    assert set(np.flatnonzero(labels == 2)) <= set(idx)
    np.testing.assert_array_equal(idx, few_shot_indices(y, k=10, seed=0))
    assert not np.array_equal(idx, few_shot_indices(y, k=10, seed=1))


def test_few_shot_indices_multi_label(data) -> None:
    _, train_y, _, _ = data
    k = 10
    for seed in range(3):
        idx = few_shot_indices(train_y, k=k, seed=seed)
        assert len(np.unique(idx)) == len(idx) and idx.min() >= 0 and idx.max() < len(train_y)
        # Union over classes: each class has its k draws, plus positives drawn for other classes.
        assert np.all(train_y[idx].sum(axis=0) >= k)
        assert k <= len(idx) <= N_CLASSES * k
    everything = few_shot_indices(train_y, k=10_000, seed=0)
    np.testing.assert_array_equal(everything, np.flatnonzero(train_y.any(axis=1)))
    with pytest.raises(ValueError, match="k must be"):
        few_shot_indices(train_y, k=0, seed=0)


def test_few_shot_table(data) -> None:
    train_x, train_y, test_x, test_y = data
    table = few_shot_table(train_x, train_y, test_x, test_y, ks=(10, 50, 100), seeds=(0, 1, 2))
    assert list(table.columns) == TABLE_COLUMNS
    assert table["k"].tolist() == [10, 50, 100, "all"]
    assert table["n_train_mean"].iloc[-1] == len(train_y)
    assert np.all(np.diff(table["n_train_mean"]) > 0)
    assert table["auroc_std"].iloc[0] > 0 and table["auprc_std"].iloc[0] > 0
    assert table["auroc_std"].iloc[-1] == 0 and table["auprc_std"].iloc[-1] == 0
    assert np.all(np.diff(table["auroc_mean"]) >= 0)  # more labelled data never hurts here ...
    assert table["auroc_mean"].iloc[-1] - table["auroc_mean"].iloc[0] > 0.01  # ... and k=10 clearly lags
    assert table["auroc_mean"].iloc[-1] > 0.9
    # The "all" row is the plain probe on the whole training set.
    full = linear_probe(train_x, train_y, test_x, test_y, seed=0)
    assert table["auroc_mean"].iloc[-1] == pytest.approx(full["auroc"])
    # The k=10 row averages the probes on the three seeds' subsets.
    by_seed = [linear_probe(train_x[i], train_y[i], test_x, test_y, seed=s)["auroc"]
               for s, i in ((s, few_shot_indices(train_y, 10, s)) for s in (0, 1, 2))]
    assert table["auroc_mean"].iloc[0] == pytest.approx(np.mean(by_seed))
    assert table["auroc_std"].iloc[0] == pytest.approx(np.std(by_seed))


def test_few_shot_table_per_class_columns(data) -> None:
    train_x, train_y, test_x, test_y = data
    names = ["NORM", "MI", "STTC", "CD"]
    table = few_shot_table(train_x, train_y, test_x, test_y, ks=(20,), seeds=(0, 1), class_names=names)
    assert list(table.columns) == TABLE_COLUMNS + [f"auroc/{n}" for n in names]
    assert table.shape == (2, len(TABLE_COLUMNS) + 4)
    assert table[[f"auroc/{n}" for n in names]].mean(axis=1).to_numpy() == pytest.approx(table["auroc_mean"])


def fake_table(means: list[float], stds: list[float], ks: tuple = (10, 50, "all")) -> pd.DataFrame:
    return pd.DataFrame({"k": list(ks), "n_train_mean": [30.0, 120.0, 400.0][: len(ks)], "auroc_mean": means,
                         "auroc_std": stds, "auprc_mean": [m - 0.2 for m in means], "auprc_std": stds})


def test_comparison_table() -> None:
    results = {"EP-Prior": fake_table([0.8123, 0.85, 0.9], [0.0104, 0.005, 0.0]),
               "baseline": fake_table([0.7, 0.8], [0.02, 0.01], ks=(10, "all")),
               "ablation": fake_table([0.75, 0.8, 0.88], [0.0, 0.0, 0.0]).astype({"k": str})}  # as read from CSV
    table = comparison_table(results)
    assert table.shape == (3, 3)
    assert table.index.tolist() == ["EP-Prior", "baseline", "ablation"] and table.index.name == "model"
    assert table.columns.tolist() == ["10", "50", "all"]
    assert table.loc["EP-Prior"].tolist() == ["0.812 ± 0.010", "0.850 ± 0.005", "0.900 ± 0.000"]
    assert table.loc["baseline"].tolist() == ["0.700 ± 0.020", "", "0.800 ± 0.010"]

    auprc = comparison_table(results, metric="auprc", numeric=True)
    assert auprc.shape == (3, 3)
    np.testing.assert_allclose(auprc.loc["EP-Prior"], [0.6123, 0.65, 0.7])
    assert np.isnan(auprc.loc["baseline", "50"]) and auprc.loc["ablation", "all"] == pytest.approx(0.68)


def write_job(sweep: Path, num: int, task_name: str, table: pd.DataFrame | None) -> None:
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text(f"task_name: {task_name}\nseed: {num}\n")
    if table is not None:
        table.to_csv(job / "few_shot.csv", index=False)


def sweep_config(sweep: Path):
    return OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})


def test_collect_results(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "EP-Prior", fake_table([0.80, 0.86, 0.90], [0.02, 0.01, 0.0]))
    write_job(sweep, 1, "EP-Prior", fake_table([0.84, 0.86, 0.92], [0.02, 0.01, 0.0]))
    write_job(sweep, 2, "baseline", fake_table([0.70, 0.75, 0.80], [0.03, 0.02, 0.0]))
    write_job(sweep, 10, "baseline", None)  # a failed job: sorts after 2, counted, skipped
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    with caplog.at_level(logging.INFO, logger="bioexp.utils.collect"):
        CollectResults().on_multirun_end(config=sweep_config(sweep))

    table = pd.read_csv(sweep / "comparison.csv", index_col="model", dtype=str, keep_default_na=False)
    assert table.shape == (2, 3) and table.index.tolist() == ["EP-Prior", "baseline"]
    assert table.columns.tolist() == ["10", "50", "all"]
    # Two jobs of EP-Prior: mean 0.82; std over all 6 fits = sqrt(within 0.02**2 + between 0.02**2) = 0.028.
    assert table.loc["EP-Prior"].tolist() == ["0.820 ± 0.028", "0.860 ± 0.010", "0.910 ± 0.010"]
    assert table.loc["baseline"].tolist() == ["0.700 ± 0.030", "0.750 ± 0.020", "0.800 ± 0.000"]
    assert (sweep / "comparison.md").read_text().splitlines() == [
        "| model | 10 | 50 | all |", "|---|---|---|---|",
        "| EP-Prior | 0.820 ± 0.028 | 0.860 ± 0.010 | 0.910 ± 0.010 |",
        "| baseline | 0.700 ± 0.030 | 0.750 ± 0.020 | 0.800 ± 0.000 |"]
    assert "auroc of 3 job(s) in 2 group(s); 1 job(s) without few_shot.csv skipped" in caplog.text


def test_collect_results_nothing_to_collect(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    write_job(sweep, 0, "EP-Prior", None)
    write_job(sweep, 1, "baseline", None)
    callback = CollectResults(metric="auprc")
    with caplog.at_level(logging.INFO, logger="bioexp.utils.collect"):
        callback.on_multirun_end(config=sweep_config(sweep))
        callback.on_multirun_end(config=sweep_config(tmp_path / "missing"))
        callback.on_multirun_end(config=OmegaConf.create({}))  # no hydra.sweep.dir at all
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1"]
    assert not (tmp_path / "missing").exists()
    assert "none of 2 job(s)" in caplog.text and "none of 0 job(s)" in caplog.text
    assert "no comparison table" in caplog.text


APP = '''
import hydra
import pandas as pd
from hydra.core.hydra_config import HydraConfig


@hydra.main(version_base="1.3", config_path=".", config_name="config")
def main(cfg):
    if cfg.score < 0:  # finishes without results (a raising job would end a basic-sweeper multirun in an error)
        return
    out = HydraConfig.get().runtime.output_dir
    pd.DataFrame({"k": ["10", "all"], "auroc_mean": [cfg.score, cfg.score + 0.1], "auroc_std": [0.0, 0.0]}).to_csv(
        f"{out}/few_shot.csv", index=False)


main()
'''

CONFIG = '''
task_name: train
score: 0.5
hydra:
  job:
    chdir: false
  sweep:
    dir: multirun/${task_name}/sweep   # like conf/hydra/default.yaml: each task_name gets its own dir
    subdir: ${hydra.job.num}
  callbacks:
    collect_results:
      _target_: bioexp.utils.collect.CollectResults
      filename: few_shot.csv
      group_by: task_name
      metric: auroc
'''


def test_collect_results_in_a_real_multirun(tmp_path: Path) -> None:
    """Hydra instantiates the callback from hydra.callbacks; jobs swept over task_name land outside the sweep dir."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "config.yaml").write_text(textwrap.dedent(CONFIG))
    proc = subprocess.run([sys.executable, "app.py", "-m", "task_name=ep_prior,baseline", "score=0.6,0.8,-1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "auroc of 4 job(s) in 2 group(s); 2 job(s) without few_shot.csv skipped" in proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "multirun/train/sweep/comparison.csv", index_col="model", dtype=str)
    assert table.index.tolist() == ["ep_prior", "baseline"]
    assert table.loc["ep_prior"].tolist() == ["0.700 ± 0.100", "0.800 ± 0.100"]
