"""PTBXLDataModule on synthetic PTB-XL: splits, normalisation, rates, crops, caching, synthesis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from bioexp.data.ecg_io import read_leads
from bioexp.data.ptbxl import PTBXLDataModule
from bioexp.data.sampling import EpochSampler
from bioexp.errors import BioexpError


def _dm(root: Path, tmp_path: Path, **kwargs) -> PTBXLDataModule:
    dm = PTBXLDataModule(str(root), cache_dir=str(tmp_path / "cache"), num_workers=0, decode_workers=0, **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_splits_follow_the_folds_and_never_share_patients(synth_root: Path, tmp_path: Path):
    dm = _dm(synth_root, tmp_path)
    assert dm.dims == {"num_classes": 5, "in_channels": 12, "input_length": 1000}
    assert dm.classes == ["CD", "HYP", "MI", "NORM", "STTC"]
    db = pd.read_csv(synth_root / "ptbxl_database.csv", index_col="ecg_id")
    patients = {}
    for split, folds in (("train", range(1, 9)), ("val", [9]), ("test", [10])):
        rows, y = dm.split_rows(split)
        assert set(db.iloc[rows]["strat_fold"]) <= set(folds)
        assert y.shape == (len(rows), 5) and (y.sum(axis=1) >= 1).all()
        patients[split] = set(db.iloc[rows]["patient_id"])
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert sum(len(dm.datasets[s]) for s in ("train", "val", "test")) == len(dm.metadata()[0])


def test_record_normalisation_and_raw_signals(synth_root: Path, tmp_path: Path):
    x, y = _dm(synth_root, tmp_path)._loader("val", shuffle=False).dataset[0]
    assert x.shape == (12, 1000) and y.shape == (5,)
    torch.testing.assert_close(x.mean(dim=1), torch.zeros(12), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=1, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)
    raw_dm = _dm(synth_root, tmp_path, normalize="none")
    raw, _ = raw_dm.datasets["val"][0]
    row = raw_dm.datasets["val"].rows[0]
    filename = pd.read_csv(synth_root / "ptbxl_database.csv")["filename_lr"].iloc[row]
    np.testing.assert_allclose(raw.numpy(), read_leads(synth_root / filename)[0], atol=1e-6)


def _raw_train(dm: PTBXLDataModule) -> np.ndarray:
    return np.load(dm._signals_cache().path)[dm.split_rows("train")[0]].astype(np.float64)


def test_train_standardisation_is_the_benchmarks_scaler(synth_root: Path, tmp_path: Path):
    from sklearn.preprocessing import StandardScaler

    dm = _dm(synth_root, tmp_path, normalize="train")
    raw = _raw_train(dm)
    # the benchmark's preprocess_signals: one StandardScaler over every training sample, all leads together
    ss = StandardScaler().fit(np.vstack(raw).flatten()[:, None])
    train = dm.datasets["train"]
    np.testing.assert_allclose(train.mean.ravel(), ss.mean_, rtol=1e-6)
    np.testing.assert_allclose(train.std.ravel(), ss.scale_, rtol=1e-6)
    x = dm.datasets["test"][2][0].numpy()
    record = np.load(dm._signals_cache().path)[dm.split_rows("test")[0][2]]
    np.testing.assert_allclose(x, ss.transform(record.reshape(-1, 1)).reshape(record.shape), atol=1e-5)


def test_per_lead_train_standardisation_is_a_variant(synth_root: Path, tmp_path: Path):
    dm = _dm(synth_root, tmp_path, normalize="train_per_lead")
    raw = _raw_train(dm)
    train = dm.datasets["train"]
    np.testing.assert_allclose(train.mean.ravel(), raw.mean(axis=(0, 2)), rtol=1e-5)
    np.testing.assert_allclose(train.std.ravel(), raw.std(axis=(0, 2)), rtol=1e-5)


def test_sliding_evaluation_windows_are_the_benchmarks(synth_root: Path, tmp_path: Path):
    dm = _dm(synth_root, tmp_path, crop_seconds=2.5, eval_stride_seconds=1.25, normalize="none")
    assert dm.dims["input_length"] == 250
    x, y = dm.datasets["test"][4]
    record = np.load(dm._signals_cache().path)[dm.split_rows("test")[0][4]]
    # the benchmark's TimeseriesDatasetCrops(chunk_length=250, stride=125, min_chunk_length=250): starts 0..750
    assert x.shape == (7, 12, 250) and y.shape == (5,)
    for k, start in enumerate(range(0, 751, 125)):
        np.testing.assert_array_equal(x[k].numpy(), record[:, start : start + 250])
    assert dm.datasets["train"][(4, 9)][0].shape == (12, 250)           # training: one random crop
    assert dm.eval_dataloader("test").dataset[4][0].shape == (12, 1000)  # probes: whole records
    batch = next(iter(dm.test_dataloader()))[0]
    assert batch.shape[1:] == (7, 12, 250)


def test_unlabelled_records_are_kept_for_self_supervision(synth_root: Path, tmp_path: Path):
    supervised = _dm(synth_root, tmp_path, label_set="form")
    ssl = _dm(synth_root, tmp_path, label_set="form", keep_unlabelled=True)
    counts = ssl.label_counts()
    db = pd.read_csv(synth_root / "ptbxl_database.csv", index_col="ecg_id")
    assert counts["train"][1] > 0 and sum(counts["train"]) == int((db["strat_fold"] <= 8).sum())
    assert len(ssl.datasets["train"]) == sum(counts["train"])
    assert supervised.label_counts() == {s: (n, 0) for s, (n, _) in counts.items()}  # the same labelled records
    assert len(supervised.datasets["train"]) == counts["train"][0]
    y = ssl.datasets["train"].targets
    assert int((y.sum(dim=1) == 0).sum()) == counts["train"][1] and ssl.classes == supervised.classes


def test_beat_windows_come_from_the_cached_peaks(synth_root: Path, tmp_path: Path, monkeypatch):
    from bioexp.data import ecg_io
    from bioexp.data.rpeaks import MAX_PEAKS, record_index

    dm = _dm(synth_root, tmp_path, crop_seconds=1.0, crop_align="beat", eval_crop=True)
    signals = np.load(dm._signals_cache().path)
    index = np.load(dm._peaks_cache().path)
    row = dm.split_rows("val")[0][3]
    np.testing.assert_array_equal(index[row], record_index(signals[row], 100))
    monkeypatch.setattr(ecg_io, "r_peaks", lambda *a, **k: pytest.fail("R peaks detected per item"))
    x = dm.eval_dataloader("val").dataset[3][0].numpy()
    record = signals[row]
    z = (record - record.mean(axis=-1, keepdims=True)) / (record.std(axis=-1, keepdims=True) + 1e-6)
    peaks = index[row, :MAX_PEAKS]
    starts = peaks[peaks >= 0].astype(int) - 35
    starts = starts[(starts >= 0) & (starts <= 900)]
    start = starts[np.argmin(np.abs(starts - 450))]
    np.testing.assert_allclose(x, z[:, start : start + 100], atol=1e-5)


def test_500hz_records(tmp_path: Path):
    from bioexp.data.synth import generate_ptbxl

    root = generate_ptbxl(tmp_path / "hr", records=40, seed=3, high_rate=True)
    dm = _dm(root, tmp_path, sampling_rate=500, crop_seconds=2.5, label_set="rhythm")
    assert dm.datasets["val"][0][0].shape == (12, 5000)
    assert dm.datasets["train"][(0, 7)][0].shape == (12, 1250)
    assert dm.dims["num_classes"] == len(dm.classes) and "SR" in dm.classes


def test_training_order_and_crops_depend_on_seed_and_epoch_only(synth_root: Path, tmp_path: Path):
    dm = _dm(synth_root, tmp_path, crop_seconds=2.5, batch_size=16)
    first = next(iter(dm.train_dataloader()))[0]
    again = next(iter(dm.train_dataloader()))[0]
    assert first.shape == (16, 12, 250)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    sampler = EpochSampler(100, seed=0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(i for i, _ in sampler) == list(range(100))
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    dataset = dm.datasets["train"]
    torch.testing.assert_close(dataset[(3, 11)][0], dataset[(3, 11)][0], rtol=0, atol=0)
    assert not torch.equal(dataset[(3, 11)][0], dataset[(3, 12)][0])


def test_missing_root_is_synthesised_when_asked(tmp_path: Path):
    root = tmp_path / "fresh"
    dm = _dm(root, tmp_path, synthesize={"records": 30, "seed": 1})
    assert (root / "ptbxl_database.csv").is_file() and (root / "ground_truth.csv").is_file()
    assert len(dm.metadata()[0]) > 20


def test_cache_is_reused_across_datamodules(synth_root: Path, tmp_path: Path):
    first = _dm(synth_root, tmp_path)._signals_cache().path
    stamp = first.stat().st_mtime_ns
    assert _dm(synth_root, tmp_path)._signals_cache().path == first and first.stat().st_mtime_ns == stamp


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"label_set": "bogus"}, "unknown data.label_set 'bogus'"),
    ({"sampling_rate": 250}, "data.sampling_rate must be 100 or 500"),
    ({"normalize": "minmax"}, "unknown data.normalize 'minmax'; choose one of record, train, train_per_lead, none"),
    ({"window_baseline": "mean"}, "unknown data.window_baseline 'mean'; choose none or median"),
    ({"eval_stride_seconds": 1.25}, r"data.eval_stride_seconds \(sliding evaluation windows\) needs data.crop_seconds"),
])
def test_bad_options_are_clear(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(BioexpError, match=message):
        PTBXLDataModule(str(tmp_path), **kwargs)


def test_beat_aligned_windows_centre_one_beat(synth_root: Path, tmp_path: Path):
    dm = _dm(synth_root, tmp_path, crop_seconds=1.0, crop_align="beat", eval_crop=True)
    assert dm.dims["input_length"] == 100
    truth = dm.ground_truth("val")
    sinus = np.flatnonzero((truth["rhythm"] == "sinus").to_numpy())
    loader_ds = dm.eval_dataloader("val").dataset
    peaks = [int(np.abs(loader_ds[int(i)][0].numpy()).sum(axis=0).argmax()) for i in sinus]
    assert np.median(np.abs(np.array(peaks) - 35)) <= 3  # R peak 0.35 s into every window
    x_train, _ = dm.datasets["train"][(0, 5)]
    assert x_train.shape == (12, 100)
    assert len(truth) == len(loader_ds) and {"pr_ms", "qt_ms"} <= set(truth.columns)


def test_window_baseline_removes_each_leads_isoelectric_level(synth_root: Path, tmp_path: Path):
    kwargs = {"crop_seconds": 1.0, "crop_align": "beat", "eval_crop": True}
    raw = _dm(synth_root, tmp_path, **kwargs).eval_dataloader("val").dataset[3][0].numpy()
    centred = _dm(synth_root, tmp_path, window_baseline="median", **kwargs).eval_dataloader("val").dataset[3][0].numpy()
    assert np.abs(np.median(raw, axis=-1)).max() > 0.05  # record z-scoring leaves a per-window offset ...
    np.testing.assert_allclose(np.median(centred, axis=-1), 0.0, atol=1e-6)  # ... which this removes
    np.testing.assert_allclose(centred, raw - np.median(raw, axis=-1, keepdims=True), atol=1e-6)
