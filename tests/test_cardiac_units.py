"""Cardiac Dreamer parts without data: SE(3) poses, patient splits, the JSON format, the net and the loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bioexp import se3
from bioexp.data.cardiac_us import auto_split, kfold_split, manual_split, read_patient
from bioexp.errors import BioexpError, DataNotFoundError
from bioexp.nets.dreamer import CardiacDreamer, sinusoidal_positions
from bioexp.tasks.dreamer import CardiacDreamerTask

TINY_NET = {"_target_": "bioexp.nets.dreamer.CardiacDreamer", "token_type": "channel", "d_model": 32,
            "num_heads": 2, "num_layers": 1, "dim_feedforward": 64, "dropout": 0.0, "arch": "resnet18",
            "pretrained": None}
STATS = {"action_mean": [1.0, -2.0, 0.5, 3.0, 0.0, -1.0], "action_std": [5.0, 4.0, 3.0, 8.0, 6.0, 7.0],
         "change_mean": [0.0] * 6, "change_std": [2.0] * 6}

# Poses away from gimbal lock (|pitch| = 90) and from the +-180 degree wrap, where Euler angles are not unique.
translations = st.floats(-200, 200, allow_nan=False)
angles = st.floats(-175, 175, allow_nan=False)
pitches = st.floats(-85, 85, allow_nan=False)
poses = st.tuples(translations, translations, translations, angles, pitches, angles).map(
    lambda p: torch.tensor(p, dtype=torch.float64))
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)


@SETTINGS
@given(poses)
def test_pose_matrix_round_trip(pose):
    matrix = se3.pose_to_matrix(pose)
    rotation = matrix[:3, :3]
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(3, dtype=torch.float64))
    assert torch.det(rotation).item() == pytest.approx(1.0)
    torch.testing.assert_close(se3.matrix_to_pose(matrix), pose, atol=1e-7, rtol=0)


@SETTINGS
@given(poses, poses)
def test_composition_matches_matrix_product_and_inverts(first, second):
    composed = se3.compose(first, second)
    torch.testing.assert_close(se3.pose_to_matrix(composed), se3.pose_to_matrix(first) @ se3.pose_to_matrix(second))
    # moving from `first` to `composed` is `second`; undoing `first` gives back `second`
    torch.testing.assert_close(se3.pose_to_matrix(se3.relative(first, composed)), se3.pose_to_matrix(second))
    identity = se3.pose_to_matrix(first) @ se3.invert(se3.pose_to_matrix(first))
    torch.testing.assert_close(identity, torch.eye(4, dtype=torch.float64))


@SETTINGS
@given(poses, poses, poses)
def test_composition_is_associative(a, b, c):
    left, right = se3.compose(se3.compose(a, b), c), se3.compose(a, se3.compose(b, c))
    torch.testing.assert_close(se3.pose_to_matrix(left), se3.pose_to_matrix(right))


def test_euler_convention_is_zyx_and_angles_measure_rotation():
    yaw90 = torch.tensor([0.0, 0, 0, 0, 0, 90])
    torch.testing.assert_close(se3.pose_to_matrix(yaw90)[:3, :3] @ torch.tensor([1.0, 0, 0]),
                               torch.tensor([0.0, 1, 0]), atol=1e-6, rtol=0)
    turned = torch.tensor([5.0, 0, 0, 0, 30, 0])
    assert se3.rotation_angle_deg(torch.zeros(6), turned).item() == pytest.approx(30.0, abs=1e-3)
    batch = torch.randn(4, 3, 6, dtype=torch.float64)  # leading dims broadcast
    assert se3.compose(batch, batch).shape == (4, 3, 6)


def _counts(*sizes: int) -> dict[str, int]:
    return {f"p{i:02d}": n for i, n in enumerate(sizes)}


def test_auto_split_is_patient_level_seeded_and_balanced_by_samples():
    counts = _counts(10, 200, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120)
    split = auto_split(counts, (0.7, 0.15, 0.15), seed=0)
    assert sorted(sum(split.values(), [])) == sorted(counts)  # every patient in exactly one split
    assert all(split.values())
    total = sum(counts.values())
    ratios = [sum(counts[n] for n in split[s]) / total for s in ("train", "val", "test")]
    assert ratios == pytest.approx([0.7, 0.15, 0.15], abs=0.05)
    assert auto_split(counts, (0.7, 0.15, 0.15), seed=0) == split
    assert any(auto_split(counts, (0.7, 0.15, 0.15), seed=s) != split for s in range(1, 5))


def test_small_cohorts_split_by_patient_count_and_too_small_ones_fail():
    split = auto_split(_counts(5, 500, 5, 5, 5), (0.7, 0.15, 0.15), seed=1)
    assert [len(split[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    with pytest.raises(BioexpError, match="at least 3 patients"):
        auto_split(_counts(5, 5), (0.7, 0.15, 0.15), seed=0)


def test_kfold_test_sets_partition_the_patients_without_leakage():
    counts = _counts(*range(20, 110, 10))
    folds = [kfold_split(counts, 3, f, (0.7, 0.15, 0.15), seed=0) for f in range(3)]
    assert sorted(sum((f["test"] for f in folds), [])) == sorted(counts)
    for fold in folds:
        members = [set(fold[s]) for s in ("train", "val", "test")]
        assert set.union(*members) == set(counts) and sum(map(len, members)) == len(counts)
        assert fold["val"]
    with pytest.raises(BioexpError, match="data.fold must be in 0..2"):
        kfold_split(counts, 3, 3, (0.7, 0.15, 0.15), seed=0)


def test_manual_split_is_checked():
    names = ["a", "b", "c", "d"]
    assert manual_split(names, {"train": ["b", "a"], "val": ["c"], "test": ["d"]})["train"] == ["a", "b"]
    with pytest.raises(BioexpError, match="patient a is in both train and test"):
        manual_split(names, {"train": ["a"], "val": ["c"], "test": ["a"]})
    with pytest.raises(BioexpError, match="unknown patient"):
        manual_split(names, {"train": ["zz"], "val": ["c"], "test": ["d"]})
    with pytest.raises(BioexpError, match="need data.train_patients"):
        manual_split(names, {"train": ["a"], "val": None, "test": ["d"]})


def _write(folder: Path, rows: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "transitions_dataset.json").write_text(json.dumps(rows))
    return folder


ROW = {"ft1_image_path": "ft1\\image_001.png", "ft2_image_path": "ft2/image_001.png", "at1_6dof": [1, 2, 3, 4, 5, 6],
       "action_change_6dof": [0.5] * 6, "at2_6dof": [0, 0, 0, 0, 0, 0], "ft1_frame_id": 7}


def test_json_paths_accept_windows_separators(tmp_path):
    patient = read_patient(_write(tmp_path / "data_0513_01", [ROW]))
    assert patient.image_t1 == [tmp_path / "data_0513_01" / "ft1" / "image_001.png"]
    assert patient.image_t2 == [tmp_path / "data_0513_01" / "ft2" / "image_001.png"]
    assert patient.at1.dtype == np.float32 and patient.at1.shape == (1, 6)


@pytest.mark.parametrize(("rows", "message"), [
    ([{**ROW, "at2_6dof": [0, 0, 0]}], r"entry 0: at2_6dof must be 6 finite numbers"),
    ([ROW, {k: v for k, v in ROW.items() if k != "at1_6dof"}], r"entry 1 lacks at1_6dof"),
    ([{**ROW, "at1_6dof": [1, 2, 3, 4, 5, float("nan")]}], r"6 finite numbers"),
    ([{**ROW, "ft2_image_path": ""}], r"ft2_image_path must be a non-empty path"),
    ([], r"non-empty JSON list"),
    ({"transitions": []}, r"non-empty JSON list"),
])
def test_bad_json_gets_a_message_naming_the_entry(tmp_path, rows, message):
    with pytest.raises(BioexpError, match=message):
        read_patient(_write(tmp_path / "p", rows))


def test_unparseable_or_missing_json(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    with pytest.raises(DataNotFoundError, match="transitions_dataset.json is missing"):
        read_patient(folder)
    (folder / "transitions_dataset.json").write_text("[{")
    with pytest.raises(BioexpError, match="not valid JSON"):
        read_patient(folder)


def test_sinusoidal_positions_are_distinct_and_bounded():
    table = sinusoidal_positions(50, 16)
    assert table.shape == (50, 16) and table.abs().max() <= 1.0
    assert torch.cdist(table, table).add(torch.eye(50)).min() > 0.1


@pytest.mark.parametrize(("token_type", "size", "cells"), [("channel", 64, 2), ("spatial", 96, 3)])
def test_net_shapes(token_type, size, cells):
    torch.manual_seed(0)
    config = {k: v for k, v in TINY_NET.items() if k != "_target_"}  # pretrained=None: no cache lookup
    net = CardiacDreamer(image_size=size, **{**config, "token_type": token_type}).eval()
    out = net(torch.rand(3, 1, size, size), torch.randn(3, 6))
    assert out["features_t1"].shape == out["features_t2"].shape == (3, 512, cells, cells)
    assert out["action_t2"].shape == (3, 6) and torch.isfinite(out["action_t2"]).all()


def _task(**kwargs) -> CardiacDreamerTask:
    torch.manual_seed(0)
    return CardiacDreamerTask(net=TINY_NET, optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3},
                              action_stats=STATS, image_size=64, **kwargs).eval()


def _batch(n: int = 4) -> dict:
    g = torch.Generator().manual_seed(1)
    at2, change = torch.randn(n, 6, generator=g) * 5, torch.randn(n, 6, generator=g) * 2
    return {"image_t1": torch.rand(n, 1, 64, 64, generator=g), "image_t2": torch.rand(n, 1, 64, 64, generator=g),
            "at1": se3.compose(change, at2), "action_change": change, "at2": at2, "patient": ["p"] * n}


def test_forward_composes_the_move_with_the_predicted_t2_action():
    task, batch = _task(), _batch()
    with torch.no_grad():
        out = task(batch["image_t1"], batch["action_change"])
    torch.testing.assert_close(out["action_t1"], se3.compose(batch["action_change"], out["action_t2"]))
    torch.testing.assert_close(task.normalize(task.denormalize(out["action_t2"])), out["action_t2"])


def test_additive_composition_subtracts_the_move_as_the_public_labels_add_it():
    """Public labels: at2 = at1 + move, so the model's a'_t1 is a'_t2 - move; main and t2 losses then coincide."""
    task, batch = _task(composition="additive"), _batch()
    batch["at1"] = batch["at2"] - batch["action_change"]
    with torch.no_grad():
        out = task(batch["image_t1"], batch["action_change"])
    torch.testing.assert_close(out["action_t1"], out["action_t2"] - batch["action_change"])
    logged = {}
    task.log = lambda name, value, **kw: logged.__setitem__(name, float(value))
    task._step(batch, "val")
    assert logged["val/main_task_loss"] == pytest.approx(logged["val/t2_action_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="model.composition"):
        _task(composition="quaternion")


def test_losses_latent_target_is_the_real_t2_frame_without_gradient(monkeypatch):
    task, batch = _task(), _batch()
    logged = {}
    monkeypatch.setattr(task, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    batch["image_t2"].requires_grad_(True)
    total, _ = task._step(batch, "train")
    total.backward()
    assert batch["image_t2"].grad is None  # stop-gradient target
    assert logged["train/loss"] == pytest.approx(logged["train/main_task_loss"] + logged["train/t2_action_loss"]
                                                 + 0.2 * logged["train/latent_loss"], rel=1e-5)
    first = dict(logged)
    task._step({**batch, "image_t2": batch["image_t1"]}, "train")  # a different t2 frame: only the latent term moves
    assert logged["train/main_task_loss"] == pytest.approx(first["train/main_task_loss"])
    assert logged["train/latent_loss"] != pytest.approx(first["train/latent_loss"])
    primary = _task(primary_task_only=True)
    monkeypatch.setattr(primary, "log", lambda name, value, **kw: logged.__setitem__(name, float(value)))
    assert float(primary._step(batch, "val")[0].detach()) == pytest.approx(logged["val/main_task_loss"])
