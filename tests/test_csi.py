"""CSI-Predictor data (formats, bad input, split, augmentation), synthetic cohort, and end-to-end runs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from bioexp.data.csi import (
    CSIDataModule,
    CSIDataset,
    csi_average,
    read_image,
    read_labels,
    split_indices,
    strata,
)
from bioexp.data.synth.csi import ZONES, generate_csi, render, to_nifti_array
from bioexp.errors import BioexpError, DataNotFoundError
from bioexp.tasks.csi import CSITask
from bioexp.train import train
from tests.conftest import compose_cfg, run_cli

BASE = ["experiment=csi", "data.image_size=32", "data.num_workers=0", "data.batch_size=16", "data.synthesize=null",
        "trainer=cpu", "callbacks.rich_progress_bar=null", "print_config=false"]
CUSTOM = ["model/backbone=custom_1", "model.backbone.widths=[4,8,8,16,16]"]
TINY = [*BASE, *CUSTOM]


@pytest.fixture(scope="session")
def csi_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 synthetic 64-px chest X-rays, written once per session; treat as read-only."""
    return generate_csi(tmp_path_factory.mktemp("csi") / "csi", images=120, size=64, seed=0)


def _module(root: Path, cache: Path, **kwargs) -> CSIDataModule:
    dm = CSIDataModule(str(root), image_size=32, num_workers=0, batch_size=8, cache_dir=str(cache), **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_synthetic_cohort_is_in_the_real_format(csi_root):
    text = (csi_root / "labels.csv").read_text().splitlines()
    assert text[0] == "FileID;" + ";".join(ZONES) + ";PatientID;csi"
    table, skipped = read_labels(csi_root / "labels.csv")
    assert len(table) == 120 and not skipped
    scores = table[list(ZONES)].to_numpy()
    assert set(np.unique(scores)) == {0, 1, 2, 3, 4} and 0.02 < (scores == 4).mean() < 0.2  # some ungradable
    assert any(";;" in line for line in text[1:])  # ungradable = blank
    image = nib.load(csi_root / "images" / "CXR00000.nii.gz")
    assert image.get_data_dtype() == np.float32 and image.shape == (64, 64)
    assert table["PatientID"].nunique() < len(table)  # some patients have two images
    np.testing.assert_allclose(table["csi"], csi_average(scores), atol=0.005)  # the cohort's own CSI average


def test_nifti_orientation_round_trips_and_zone_appearance_follows_the_score(tmp_path):
    img = render(np.zeros(6), np.zeros(6, bool), 64, np.random.default_rng(0))
    nib.save(nib.Nifti1Image(to_nifti_array(img).astype(np.float32), np.eye(4)), tmp_path / "x.nii.gz")
    np.testing.assert_allclose(read_image(tmp_path / "x.nii.gz"), img, atol=1e-6)
    lung_means = [np.mean([render(np.full(6, score), np.zeros(6, bool), 96, np.random.default_rng(seed))[30:68, 15:38]
                           for seed in range(4)]) for score in range(4)]  # the right lung, sup to inf
    assert np.all(np.diff(lung_means) > 0.01), lung_means


def test_png_jpeg_and_dicom_images_are_read(tmp_path):
    import pydicom
    from PIL import Image
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    pixels = (np.arange(48 * 40).reshape(48, 40) % 256).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "b.jpg", quality=100)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)
    assert read_image(tmp_path / "b.jpg").shape == (48, 40)
    for photometric in ("MONOCHROME2", "MONOCHROME1"):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 48, 40, 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -10
        ds.PixelData = pixels.astype(np.uint16).tobytes()
        ds.save_as(tmp_path / f"{photometric}.dcm", enforce_file_format=True)
    expected = pixels * 2.0 - 10
    np.testing.assert_allclose(read_image(tmp_path / "MONOCHROME2.dcm"), expected)
    np.testing.assert_allclose(read_image(tmp_path / "MONOCHROME1.dcm"), expected.max() + expected.min() - expected)


def test_bad_rows_and_images_are_skipped_and_reported(tmp_path, csi_root, caplog):
    root = tmp_path / "cohort"
    shutil.copytree(csi_root, root)
    table = pd.read_csv(root / "labels.csv", sep=";", dtype=str, keep_default_na=False)
    table.loc[0, "right_sup"] = "5"  # out of range
    table.loc[1, "left_inf"] = "x"  # not a score
    (root / "images" / "CXR00002.nii.gz").unlink()  # missing image
    (root / "images" / "CXR00003.nii.gz").write_bytes(b"not a nifti")  # unreadable
    table.loc[4, "FileID"] = "CXR00004.nii.gz"  # FileIDs may carry the extension
    table.to_csv(root / "labels.csv", sep=";", index=False)
    with caplog.at_level(logging.WARNING):
        dm = _module(root, tmp_path / "cache")
    assert set(dm.skipped) == {"CXR00000", "CXR00001", "CXR00002", "CXR00003"}
    assert "outside 0-3" in dm.skipped["CXR00000"] and "no image" in dm.skipped["CXR00002"]
    assert "skipped 4 of 120" in caplog.text
    assert sum(len(ds) for ds in dm.datasets.values()) == 116


def test_missing_data_says_where_to_get_it(tmp_path):
    with pytest.raises(DataNotFoundError, match="python -m bioexp.data.synth csi"):
        CSIDataModule(str(tmp_path / "none")).prepare_data()
    with pytest.raises(BioexpError, match="normalize"):
        CSIDataModule(str(tmp_path), normalize="unit")


def test_split_is_seeded_stratified_and_keeps_patients_together(csi_root, tmp_path):
    dm = _module(csi_root, tmp_path / "cache", split_seed=3)
    table = dm.table()
    splits = split_indices(table[list(ZONES)].to_numpy(), table["PatientID"].to_numpy(), (0.7, 0.15, 0.15), 3)
    patients = {name: set(table["PatientID"].iloc[idx]) for name, idx in splits.items()}
    assert not (patients["train"] & patients["val"]) and not (patients["train"] & patients["test"])
    assert not (patients["val"] & patients["test"])
    sizes = {name: len(idx) for name, idx in splits.items()}
    assert sum(sizes.values()) == len(table) and 0.6 < sizes["train"] / len(table) < 0.8, sizes
    again = split_indices(table[list(ZONES)].to_numpy(), table["PatientID"].to_numpy(), (0.7, 0.15, 0.15), 3)
    assert all(np.array_equal(splits[k], again[k]) for k in splits)
    targets = np.array([[0] * 6] * 40 + [[3] * 6] * 40 + [[1, 1, 1, 1, 1, 4]] * 40)  # by image: strata balanced
    by_image = split_indices(targets, None, (0.7, 0.15, 0.15), 0)
    for idx in by_image.values():
        assert len(set(strata(targets[idx]))) == 3


def test_training_images_are_augmented_reproducibly_and_normalised(csi_root, tmp_path):
    dm = _module(csi_root, tmp_path / "cache", augment={"rotate": 5.0, "translate": 0.05})
    train = dm.datasets["train"]
    a, b, c = train[(0, 7)][0], train[(0, 7)][0], train[(0, 8)][0]
    assert a.shape == (3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    val = dm.datasets["val"]
    assert val.augment is None and torch.equal(val[0][0], val[0][0])
    plain = CSIDataset(val.path, val.rows, val.targets.numpy(), normalize="minmax")[0][0]
    assert plain.min() >= 0 and plain.max() <= 1
    np.testing.assert_allclose(val[0][0][0].numpy(), ((plain[0] - 0.485) / 0.229).numpy(), atol=1e-5)


def _train(tmp_path: Path, root: Path, *overrides: str, backbone: tuple[str, ...] = tuple(CUSTOM)) -> tuple[dict, Path]:
    out = tmp_path / "run"
    cfg = compose_cfg([*BASE, *backbone, f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", *overrides], out)
    return train(cfg)[0], out


@pytest.mark.parametrize("backbone", [
    ("model/backbone=resnet50",),
    ("model/backbone=chexnet",),
    ("model/backbone=raddino", "model.backbone.config.hidden_size=32", "model.backbone.config.num_hidden_layers=1",
     "model.backbone.config.num_attention_heads=2", "data.image_size=28"),
])
def test_each_backbone_completes_a_fast_dev_run(tmp_path, csi_root, backbone):
    summary, _ = _train(tmp_path, csi_root, "debug=fdr", "data.batch_size=4", backbone=backbone)
    assert {"train/loss", "val/f1_weighted", "test/f1_weighted", "test/csi_mae"} <= set(summary["metrics"])


@pytest.mark.slow
def test_raddino_runs_at_its_native_518_input(tmp_path, csi_root):
    summary, _ = _train(tmp_path, csi_root, "data.image_size=518", "debug=fdr", "data.batch_size=2",
                        backbone=("model/backbone=raddino",))
    assert np.isfinite(summary["metrics"]["train/loss"])


def test_custom_1_learns_and_writes_its_run_files(tmp_path, csi_root):
    summary, out = _train(tmp_path, csi_root, "trainer.max_epochs=8", "model/scheduler=cosine", "data.image_size=48",
                          backbone=("model/backbone=custom_1", "model.backbone.widths=[8,16,16,32,32]"))
    history = json.loads((out / "training_history.json").read_text())
    val_history = json.loads((out / "validation_history.json").read_text())
    assert len(history) == len(val_history) == 8 and history[-1]["train/loss"] < 0.92 * history[0]["train/loss"]
    assert max(r["val/f1_weighted"] for r in val_history) > val_history[0]["val/f1_weighted"] + 0.1
    assert {"val/f1_weighted", "val/csi_mae", "val/ahf_accuracy", "val/f1_macro_left_inf"} <= set(val_history[-1])
    assert (out / "plots" / "ahf_confusion_test.png").stat().st_size > 5_000
    metrics = summary["metrics"]
    assert {f"test/{k}" for k in ("f1_macro", "precision_0", "recall_3", "csi_rmse", "csi_pearson", "ahf_f1")} <= set(
        metrics)
    model = CSITask.load_from_checkpoint(summary["best_checkpoint"], weights_only=True)
    assert model.hparams.backbone["pretrained"] is False
    assert model.eval()(torch.randn(1, 3, 48, 48)).shape == (1, 6, 5)


def test_plateau_scheduler_steps_on_val_loss(tmp_path, csi_root):
    # threshold 10: no epoch counts as an improvement, so with patience 0 every epoch halves the rate
    summary, out = _train(tmp_path, csi_root, "debug=limit", "trainer.max_epochs=3", "model.scheduler.patience=0",
                          "model.scheduler.threshold=10")
    lrs = [r["lr"] for r in json.loads((out / "training_history.json").read_text())]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(2.5e-4), lrs


def test_cli_experiment_runs_and_bad_pretrained_is_one_line(tmp_path, csi_root):
    base = [*BASE, f"data.root={csi_root}", f"data.cache_dir={tmp_path / 'cache'}", "hydra.run.dir=run"]
    done = run_cli([*base, *CUSTOM, "debug=fdr"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["optimized_metric"]["name"] == "val/loss"
    bad = run_cli([*base, "model/backbone=chexnet", "model.backbone.pretrained=true"], tmp_path)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "model.backbone.weights_path=" in bad.stderr and "pretrained=false" in bad.stderr


@pytest.mark.slow
def test_optuna_sweep_runs_three_trials(tmp_path, csi_root):
    done = run_cli(["-m", *BASE, f"data.root={csi_root}", f"data.cache_dir={tmp_path / 'cache'}",
                    "hparams_search=csi_optuna", "hydra.sweeper.n_trials=3", "debug=limit", "trainer.max_epochs=1",
                    "hydra.sweep.dir=sweep"], tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = (tmp_path / "sweep" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model/backbone" in results
    assert len(list((tmp_path / "sweep").glob("*/metrics.json"))) == 3
