"""Cardiac Dreamer end to end on a tiny synthetic cohort: generator, splits, check, training, outputs, CV."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bioexp import se3
from bioexp.data.cardiac_us import CardiacUSDataModule, action_stats, read_patient
from bioexp.data.check import run_checks
from bioexp.errors import BioexpError, DataNotFoundError
from bioexp.tasks.dreamer import CardiacDreamerTask
from bioexp.train import train
from tests.conftest import compose_cfg, run_cli

TINY = ["data.image_size=64", "data.num_workers=0", "data.batch_size=8", "model.net.d_model=32",
        "model.net.num_heads=2", "model.net.num_layers=1", "model.net.dim_feedforward=64", "model.net.arch=resnet18",
        "model.net.pretrained=null", "trainer=cpu", "callbacks.rich_progress_bar=null", "print_config=false"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic patients of about 10 transitions, 64 px frames; read-only."""
    from bioexp.data.synth.cardiac_us import generate_cardiac_us

    return generate_cardiac_us(tmp_path_factory.mktemp("cardiac") / "processed", patients=8, transitions=10,
                               size=64, seed=0)


def _patients(root: Path) -> list[Path]:
    """The patient folders (not the frame cache ``.bioexp_cache`` a datamodule writes beside them)."""
    return [p for p in root.iterdir() if not p.name.startswith(".")]


def _data(root: Path, *overrides: str) -> list[str]:
    return ["experiment=cardiac_dreamer", f"data.root={root}", "data.synthesize=null", *TINY, *overrides]


def test_synthetic_actions_are_exact_geometry(cohort):
    """Default labels are the public data's (additive, degrees): ``at = pose - target``, ``at2 = at1 + move``."""
    folder = cohort / "data_patient_03"
    patient = read_patient(folder)
    truth = json.loads((folder / "probe_poses.json").read_text())
    frames, target = np.asarray(truth["frame_poses"]), np.asarray(truth["target_pose"])
    n = len(patient)
    assert len(frames) == n + 1 and truth["composition"] == "additive" and truth["angle_unit"] == "deg"
    np.testing.assert_allclose(patient.at1, frames[:-1] - target, atol=1e-4)
    np.testing.assert_allclose(patient.at2, patient.at1 + patient.change, atol=1e-4)
    image = np.asarray(Image.open(patient.image_t1[0]))
    assert image.shape == (64, 64) and image.dtype == np.uint8
    assert image[0, 0] == 0 and image[-5:, 25:39].mean() > 10  # outside the fan is black; inside is not
    assert len(_patients(cohort)) == 8
    assert len({len(read_patient(p)) for p in _patients(cohort)}) > 1  # uneven acquisitions


def test_se3_synthetic_labels_from_scipy_agree_with_the_models_composition(tmp_path):
    """The se3 labels are written with scipy's rotations: bioexp.se3 (the model's code) must reproduce them."""
    from bioexp.data.synth.cardiac_us import generate_cardiac_us

    root = generate_cardiac_us(tmp_path / "se3", patients=1, transitions=12, size=32, seed=1, composition="se3",
                               angle_unit="rad")
    patient = read_patient(root / "data_patient_01")
    truth = json.loads((root / "data_patient_01" / "probe_poses.json").read_text())
    frames = torch.tensor(truth["frame_poses"], dtype=torch.float64)
    target = torch.tensor(truth["target_pose"], dtype=torch.float64).expand(len(patient), 6)
    degrees = torch.tensor([1, 1, 1] + [180 / np.pi] * 3, dtype=torch.float64)
    at1, change, at2 = (torch.from_numpy(a).double() * degrees for a in (patient.at1, patient.change, patient.at2))
    assert np.abs(patient.at1[:, 3:]).max() < np.pi  # radians as asked
    torch.testing.assert_close(at1, se3.relative(frames[:-1], target), atol=1e-4, rtol=0)
    torch.testing.assert_close(change, se3.relative(frames[:-1], frames[1:]), atol=1e-4, rtol=0)
    torch.testing.assert_close(se3.compose(change, at2), at1, atol=1e-4, rtol=0)
    assert (at1 - (at2 - change)).abs().max() > 0.05  # and the additive reading does not hold for se3 labels


def test_views_on_either_side_of_the_target_plane_differ():
    """Anatomy is not mirror-symmetric front to back, so the sign of an elevation or tilt error is visible.

    Blurred slices at +offset and -offset differ clearly more than two hearts' textures and speckle do.
    """
    from scipy import ndimage

    from bioexp.data.synth.cardiac_us import heart_volume, render

    volumes = [heart_volume(np.random.default_rng(seed)) for seed in (0, 1)]

    def view(volume: np.ndarray, axis: int, offset: float, seed: int) -> np.ndarray:
        pose = np.zeros(6)
        pose[axis] = offset
        return ndimage.gaussian_filter(render(volume, np.zeros(6), pose, 96, np.random.default_rng(seed)) / 255, 3)

    for axis, offset in ((1, 12.0), (3, 15.0)):  # elevation y (mm) and roll, the tilt about the lateral axis
        mirror_gap = np.abs(view(volumes[0], axis, offset, 0) - view(volumes[0], axis, -offset, 0)).mean()
        texture_gap = np.abs(view(volumes[0], axis, offset, 0) - view(volumes[1], axis, offset, 1)).mean()
        assert mirror_gap > 1.4 * texture_gap, (axis, mirror_gap, texture_gap)  # symmetric phantom: 0.9x


def test_synth_cli_writes_a_cohort_and_refuses_to_overwrite(tmp_path):
    args = ["cardiac_us", "--out", str(tmp_path / "c"), "--patients", "1", "--transitions", "2", "--size", "32"]
    done = run_cli(args, tmp_path, module="bioexp.data.synth", timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(read_patient(tmp_path / "c" / "data_patient_01")) >= 1
    again = run_cli(args, tmp_path, module="bioexp.data.synth", timeout=120)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_datamodule_splits_by_patient_and_fits_stats_on_train_only(cohort, tmp_path):
    dm = CardiacUSDataModule(str(cohort), image_size=64, num_workers=0, seed=3)
    split = dm.split
    assert not set(split["train"]) & set(split["val"]) | set(split["train"]) & set(split["test"])
    assert dm.statistics()["no_patient_leakage"]
    assert dm.dims["action_stats"] == action_stats([dm.patients[n] for n in split["train"]])
    # the same cohort with wild actions for a held-out patient: the statistics do not move
    copy = tmp_path / "copy"
    shutil.copytree(cohort, copy)
    held_out = copy / split["test"][0] / "transitions_dataset.json"
    rows = json.loads(held_out.read_text())
    for row in rows:
        row["at1_6dof"] = [v * 100 for v in row["at1_6dof"]]
    held_out.write_text(json.dumps(rows))
    assert CardiacUSDataModule(str(copy), image_size=64, seed=3).dims == dm.dims
    dm.setup()
    item = dm.datasets["train"][(0, 123)]
    assert item["image_t1"].shape == (1, 64, 64) and 0 <= item["image_t1"].min() <= item["image_t1"].max() <= 1
    assert item["patient"] in split["train"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["at1"].shape == (16, 6) and set(batch["patient"]) <= set(split["train"])


def test_appearance_augmentation_is_seeded_train_only_and_keeps_the_anatomy_in_place(cohort):
    augment = {"gain": 0.2, "gamma": 0.2, "blur": 1.0, "noise": 0.03}
    dm = CardiacUSDataModule(str(cohort), image_size=64, num_workers=0, seed=3, augment=augment)
    dm.setup()
    plain = CardiacUSDataModule(str(cohort), image_size=64, num_workers=0, seed=3)
    plain.setup()
    train, clean = dm.datasets["train"], plain.datasets["train"]
    first, again, other = train[(0, 7)], train[(0, 7)], train[(0, 8)]
    assert torch.equal(first["image_t1"], again["image_t1"]) and not torch.equal(first["image_t1"], other["image_t1"])
    original = clean[(0, 7)]["image_t1"]
    changed = first["image_t1"]
    assert changed.shape == original.shape and 0 <= changed.min() <= changed.max() <= 1
    assert 0.005 < (changed - original).abs().mean() < 0.2
    # intensity changes only: the anatomy stays where it was (shifting the image by 3 px is far worse)
    correlation = np.corrcoef(changed.flatten(), original.flatten())[0, 1]
    shifted = np.corrcoef(torch.roll(original, 3, dims=-1).flatten(), original.flatten())[0, 1]
    assert correlation > 0.8 > shifted
    for stage in ("val", "test"):
        assert torch.equal(dm.datasets[stage][(0, 7)]["image_t1"], plain.datasets[stage][(0, 7)]["image_t1"])
    with pytest.raises(BioexpError, match="unknown data.augment keys"):
        CardiacUSDataModule(str(cohort), augment={"gain": 0.2, "flip": 0.5})


def test_pre_training_check_passes_and_names_broken_entries(cohort, tmp_path):
    results = run_checks(["experiment=cardiac_dreamer", "data=cardiac_us", f"data.root={cohort}"])
    assert all(ok for ok, _ in results), results
    assert any("8 patient folder" in m for _, m in results)
    assert sum("additive holds; model.composition=additive matches" in m for _, m in results) == 8
    broken = tmp_path / "broken"
    shutil.copytree(cohort, broken)
    path = broken / "data_patient_02" / "transitions_dataset.json"
    rows = json.loads(path.read_text())
    rows[3]["at2_6dof"] = rows[3]["at2_6dof"][:5]
    path.write_text(json.dumps(rows))
    (broken / "data_patient_05" / "frames" / "frame_0001.png").write_bytes(b"not a png")
    failed = [m for ok, m in run_checks(["experiment=cardiac_dreamer", "data=cardiac_us", f"data.root={broken}"])
              if not ok]
    assert len(failed) == 2
    assert "data_patient_02" in failed[0] and "entry 3: at2_6dof must be 6 finite numbers" in failed[0]
    assert "data_patient_05" in failed[1] and "1 image(s) missing or unreadable" in failed[1]
    done = run_cli(["data=cardiac_us", f"data.root={tmp_path / 'nowhere'}"], tmp_path, module="bioexp.data.check")
    assert done.returncode == 1 and "[FAIL] data directory" in done.stdout and "synth cardiac_us" in done.stdout


@pytest.mark.parametrize("token_type", ["channel", "spatial"])
def test_both_token_types_complete_a_fast_dev_run_with_the_run_record(cohort, tmp_path, token_type):
    out = tmp_path / token_type
    summary, _ = train(compose_cfg(_data(cohort, f"model.net.token_type={token_type}", "debug=fdr"), out))
    metrics = summary["metrics"]
    assert {"train/main_task_loss", "val/main_task_loss", "val/baseline_mae_y_mm", "test/mae_x_mm",
            "test/baseline_mae_yaw_deg", "test/guidance_rot_deg"} <= set(metrics)
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert stats["no_patient_leakage"] and sum(stats["samples"].values()) == sum(stats["samples_per_patient"].values())
    config = json.loads((out / "experiment_config.json").read_text())
    assert config["model"]["net"]["token_type"] == token_type
    assert config["model"]["action_stats"] == stats["action_stats"]
    assert (out / "final_model.ckpt").is_file()
    assert (out / "plots" / "dataset_statistics.png").stat().st_size > 20_000
    per_patient = pd.read_csv(out / "test_per_patient.csv")
    assert set(per_patient["patient"]) <= set(stats["patients"]["test"]) and (per_patient["x_mm"] >= 0).all()


def test_overfitting_one_batch_drives_the_main_task_loss_down(cohort, tmp_path):
    out = tmp_path / "overfit"
    train(compose_cfg(_data(cohort, "debug=overfit", "trainer.overfit_batches=1", "trainer.max_epochs=12",
                            "data.batch_size=4", "data.image_size=32", "model.optimizer.lr=1e-3",
                            "model.net.dropout=0.0", "callbacks.model_checkpoint=null", "callbacks.cardiac_record=null",
                            "logger=csv", "test=false"), out))
    main = pd.read_csv(out / "csv" / "metrics.csv")["train/main_task_loss"].dropna().to_numpy()
    assert len(main) == 12 and main[-3:].mean() < 0.5 * main[0], main


@pytest.mark.slow
def test_top3_and_last_checkpoints_final_model_and_resume(cohort, tmp_path):
    out = tmp_path / "run"
    # whole epochs: Lightning restarts an epoch cut short by limit_train_batches when resuming
    summary, value = train(compose_cfg(_data(cohort, "trainer.max_epochs=3"), out))
    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "last.ckpt" in checkpoints and len(checkpoints) == 4, checkpoints
    assert all(n.startswith("cardiac_dreamer-epoch=") and "val_main_task_loss=" in n for n in checkpoints[:3])
    assert value == pytest.approx(min(float(n.split("=")[-1][:-5]) for n in checkpoints[:3]), abs=1e-4)
    assert (out / "plots" / "training_summary.png").stat().st_size > 20_000
    model = CardiacDreamerTask.load_from_checkpoint(out / "final_model.ckpt", map_location="cpu", weights_only=True)
    stats = json.loads((out / "dataset_stats.json").read_text())["action_stats"]
    torch.testing.assert_close(model.action_mean, torch.tensor(stats["action_mean"]))
    resumed = tmp_path / "resumed"
    last = out / "checkpoints" / "last.ckpt"
    train(compose_cfg(_data(cohort, "trainer.max_epochs=4", f"ckpt_path={last}"), resumed))
    trained = pd.read_csv(resumed / "csv" / "metrics.csv").dropna(subset=["train/loss_epoch"])["epoch"]
    assert list(trained) == [3], trained  # only the epoch after the checkpoint


def test_manual_split_and_bad_overrides_are_one_line_errors(cohort, tmp_path):
    manual = ["data.train_patients=[data_patient_01,data_patient_02,data_patient_03]",
              "data.val_patients=[data_patient_04]", "data.test_patients=[data_patient_01]"]
    done = run_cli([*_data(cohort, *manual)], tmp_path)
    assert done.returncode == 1
    assert "bioexp: error: patient data_patient_01 is in both train and test" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_three_fold_cross_validation_multirun_writes_a_summary(cohort, tmp_path):
    done = run_cli(["experiment=cardiac_dreamer_cv", f"data.root={cohort}", "data.synthesize=null", *TINY,
                    "trainer.max_epochs=1", "hydra.sweep.dir=cv"], tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pd.read_csv(tmp_path / "cv" / "cv_summary.csv", index_col="fold")
    assert list(table.index) == ["fold 0", "fold 1", "fold 2", "mean", "std"]
    assert {"mae_x_mm", "baseline_mae_x_mm", "main_task_loss"} <= set(table.columns)
    tested = [set(json.loads((tmp_path / "cv" / str(j) / "dataset_stats.json").read_text())["patients"]["test"])
              for j in range(3)]
    assert set.union(*tested) == {p.name for p in _patients(cohort)} and sum(map(len, tested)) == 8


def test_synthesizes_only_into_a_missing_or_empty_folder(tmp_path):
    tiny = {"patients": 3, "transitions": 2, "size": 32, "seed": 0}
    dm = CardiacUSDataModule(str(tmp_path / "new"), image_size=32, synthesize=tiny)
    dm.prepare_data()
    assert sorted(dm.split) == ["test", "train", "val"] and len(dm.patients) == 3
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not a patient")
    with pytest.raises(DataNotFoundError, match="no patient folder with a transitions_dataset.json"):
        CardiacUSDataModule(str(other), synthesize=tiny).dims  # noqa: B018
    assert (other / "notes.txt").is_file()


@pytest.mark.slow
def test_per_patient_test_errors_under_ddp_cover_every_test_transition_once(cohort, tmp_path):
    """2 processes each test half the transitions (the sampler pads one shard with a repeat): the gathered
    per-patient table equals one process's, counts included."""
    tables = {}
    for trainer in ("cpu", "ddp_sim"):
        out = tmp_path / trainer
        train(compose_cfg(_data(cohort, f"trainer={trainer}", "train=false", "test=true", "logger=csv",
                                "optimized_metric=null"), out))
        tables[trainer] = pd.read_csv(out / "test_per_patient.csv").set_index("patient")
    one, two = tables["cpu"], tables["ddp_sim"]
    assert one.index.tolist() == two.index.tolist() and one["n"].sum() > 0
    assert (one["n"] == two["n"]).all()
    pd.testing.assert_frame_equal(one, two, atol=2e-4, rtol=0)  # the CSV keeps 4 decimals
