"""Binary VAE end to end, as a user runs it: both experiments, the A/B comparison, sampling, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioexp.train import train
from tests.conftest import compose_cfg, run_cli

TINY = ["model/bvae_set=set0", "data.subset=300", "trainer.max_epochs=3", "trainer.min_epochs=1",
        "callbacks.early_stopping.patience=3", "callbacks.rich_progress_bar=null", "model.iw_samples=8",
        "print_config=false"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny baseline (set 0) and ECC run (set 0 with R=2: set 0's latent 100 is even), each trained once."""
    cwd = tmp_path_factory.mktemp("bvae")
    dirs = {}
    for experiment, extra in (("bvae", []), ("bvae_ecc", ["model.ecc_R=2"])):
        result = run_cli([f"experiment={experiment}", *TINY, *extra, f"hydra.run.dir={cwd / experiment}"], cwd)
        assert result.returncode == 0, result.stderr[-3000:]
        dirs[experiment] = cwd / experiment
    return dirs


@pytest.mark.parametrize(("experiment", "extra"), [("bvae", []), ("bvae_ecc", ["model.ecc_R=2"])])
def test_each_experiment_runs_one_batch(tmp_path, caplog, experiment, extra):
    with caplog.at_level("WARNING", logger="bioexp.tasks.bvae"):
        summary, _ = train(compose_cfg([f"experiment={experiment}", "debug=fdr", *TINY, *extra], tmp_path))
    assert {"train/loss", "val/loss", "test/iw_nll", "test/output_ber_eps0.05"} <= set(summary["metrics"])
    assert ("R=2 corrects no channel error" in caplog.text) == (experiment == "bvae_ecc")


def test_mnist_trains_on_the_official_split(tmp_path):
    """data=mnist as shipped, on the real t10k files next to a small fake training pair."""
    from tests.test_bvae import MNIST_TEST_COUNTS, _mnist_root

    root, _ = _mnist_root(tmp_path / "data", n_train=300)
    cfg = compose_cfg(["experiment=bvae", "data=mnist", f"data.root={root}", "data.num_workers=0", "debug=fdr",
                       *TINY, "data.subset=0"], tmp_path / "run")
    summary, _ = train(cfg)
    assert {"val/loss", "test/iw_nll"} <= set(summary["metrics"])
    from bioexp.data.binary import BinaryDataModule

    dm = BinaryDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [270, 30, 10_000]
    assert np.bincount(dm.datasets["test"].labels).tolist() == MNIST_TEST_COUNTS


@pytest.mark.slow
def test_both_experiments_train_and_keep_their_records(runs):
    for run in runs.values():
        assert len(list((run / "checkpoints").glob("epoch_*.ckpt"))) == 1  # the best epoch only (plus last.ckpt)
        assert (run / "resolved_config.yaml").is_file() and (run / f"{run.name}.log").is_file()
        history = pd.read_csv(run / "csv" / "metrics.csv")
        neg_elbo = history["val/neg_elbo"].dropna().to_numpy()
        assert len(neg_elbo) == 3 and neg_elbo[-1] < neg_elbo[0]  # the -ELBO falls while training
        assert {"train/kl", "train/beta", "train/temperature"} <= set(history.columns)
    assert "train/consistency" in pd.read_csv(runs["bvae_ecc"] / "csv" / "metrics.csv").columns


@pytest.mark.slow
def test_comparison_table_of_baseline_and_ecc(runs, tmp_path):
    result = run_cli(["runs=[" + ",".join(map(str, runs.values())) + "]", f"out={tmp_path}"], tmp_path,
                     module="bioexp.compare")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tmp_path / "comparison.csv", index_col="model")
    assert list(table.index) == ["baseline (K=N=100), hidden 100, depth 2",
                                 "ECC R=2 (K=50, N=100), hidden 100, depth 2"]
    for column in ("neg_elbo", "iw_nll", "recon_error", "latent_ber_eps0.05", "output_wer_eps0.1"):
        assert table[column].notna().all(), column
    assert (table["iw_nll"] <= table["neg_elbo"] + 0.5).all()  # the IW bound is (nearly) as tight or tighter
    assert table.loc[table.index[0], "latent_ber_eps0.05"] == pytest.approx(0.05, abs=0.02)
    # R=2 corrects nothing: its theoretical decoded-bit error rate is the channel's, as the baseline's.
    assert table["code_R"].tolist() == [1, 2]
    assert table["latent_ber_theory_eps0.05"].tolist() == pytest.approx([0.05, 0.05])
    assert list(table.columns).index("latent_ber_theory_eps0.05") == list(table.columns).index("latent_ber_eps0.05") + 1
    markdown = (tmp_path / "comparison.md").read_text()
    assert "Relative error-rate reduction" in markdown and "R=2 (ECC R=2 (K=50, N=100)" in markdown


@pytest.mark.slow
def test_sampling_writes_an_image_grid(runs):
    ckpt = next((runs["bvae_ecc"] / "checkpoints").glob("epoch_*.ckpt"))
    result = run_cli([f"ckpt_path={ckpt}", "n=16"], runs["bvae_ecc"], module="bioexp.sample")
    assert result.returncode == 0, result.stderr[-3000:]
    from PIL import Image

    with Image.open(runs["bvae_ecc"] / "plots" / "samples.png") as image:
        assert image.size == (4 * 32 + 5 * 2, 4 * 32 + 5 * 2)  # 4x4 tiles of 8x8 digits upscaled to 32x32


@pytest.mark.parametrize(("args", "module", "message"), [
    (["experiment=bvae_ecc", "model/bvae_set=set0", "model.ecc_R=3"], "bioexp.train",
     "R=3 needs parameter set 5 or 7 (model/bvae_set=set5)"),
    (["experiment=bvae", "data=mnist", "data.root=/nonexistent"], "bioexp.train", "torchvision.datasets import MNIST"),
    (["experiment=bvae", "model.ecc_R=3"], "bioexp.train", "model.ecc_R=3 has no effect without an ECC"),
    (["ckpt_path=/nonexistent.ckpt"], "bioexp.sample", "checkpoint not found"),
    (["runs=[/nonexistent]"], "bioexp.compare", "/nonexistent does not exist"),
])
def test_user_errors_are_one_line(tmp_path, args, module, message):
    result = run_cli([*args, "print_config=false"] if module == "bioexp.train" else args, tmp_path, module=module)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_multirun_without_a_sweep_dir_lands_under_the_launch_directory(tmp_path):
    """The README's multiruns name no hydra.sweep.dir: the default (under paths.log_dir) must resolve."""
    result = run_cli(["-m", "experiment=bvae", "seed=1,2", *TINY, "trainer.max_epochs=1"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert {p.name for p in sweep.glob("[0-9]")} == {"0", "1"} and (sweep / "seed_summary.md").is_file()


@pytest.mark.slow
def test_optuna_sweep_of_the_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "experiment=bvae", "hparams_search=bvae_optuna", "hydra.sweeper.n_trials=2", *TINY,
                      f"hydra.sweep.dir={sweep}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    best = (sweep / "optimization_results.yaml").read_text()
    assert "model.optimizer.lr" in best and "best_value" in best
