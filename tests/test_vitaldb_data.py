"""VitalDB windows: synthetic .vital cases, quality gates, splits, bad cases, the datamodule, real WFDB v102s."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioexp.data import vitaldb as v
from bioexp.data.synth.vitaldb import FS, generate_vitaldb, simulate_case
from bioexp.errors import BioexpError
from tests.conftest import shared_data

OPTIONS = v.merge(v.WINDOWS, {})


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 synthetic cases of 1.5 min (read-only)."""
    return generate_vitaldb(tmp_path_factory.mktemp("vitaldb") / "cases", cases=8, seed=0, minutes=1.5)


def _clean(seconds: float = 10.0) -> np.ndarray:
    """A raw [PPG, ECG] window with no defect (a case whose defects were not drawn)."""
    rng = np.random.default_rng(1)
    signals, _, truth = simulate_case(rng, 60.0)
    assert truth["artefacts"] == truth["dropouts"] == truth["nan_gaps"] == 0
    return np.stack([signals["PPG"], signals["ECG"]])[:, : int(seconds * FS)]


def test_quality_gates_find_each_defect():
    raw = _clean()
    gate = lambda x: v.quality_gate(x, FS, ["PPG", "ECG"], OPTIONS)  # noqa: E731
    assert gate(raw) is None
    nan = raw.copy()
    nan[1, 1000:1200] = np.nan  # 4% of the window missing
    flat = raw.copy()
    flat[0, 2000:2000 + FS] = flat[0, 2000]  # 1 s stuck
    short_flat = raw.copy()
    short_flat[0, 2000:2000 + FS // 4] = short_flat[0, 2000]  # 0.25 s: not a flat line
    clipped = raw.copy()
    clipped[0] = np.clip(clipped[0], None, np.percentile(clipped[0], 90))
    loud = raw.copy()
    loud[1] *= 20  # ~20-30 mV peak to peak ECG
    assert [gate(x) for x in (nan, flat, short_flat, clipped, loud)] == ["nan", "flat", None, "clipping", "amplitude"]
    few_nan = raw.copy()
    few_nan[0, [10, 500]] = np.nan  # isolated missing samples are interpolated
    assert gate(few_nan) is None


def test_case_windows_are_filtered_resampled_and_z_scored():
    raw = _clean(60.0)
    hr = np.full(60, 72.0)
    data, starts, rates, rejected = v.case_windows(raw, FS, hr, ["PPG", "ECG"], v.CHANNELS, OPTIONS)
    assert data.shape == (6, 2, 1250) and data.dtype == np.float32 and not rejected
    np.testing.assert_allclose(data.mean(axis=2), 0, atol=1e-5)
    np.testing.assert_allclose(data.std(axis=2), 1, atol=1e-4)
    np.testing.assert_array_equal(starts, [0, 10, 20, 30, 40, 50])
    np.testing.assert_allclose(rates, 72.0)
    # the PPG band-pass removes the 50-unit baseline and everything above 8 Hz
    spectrum = np.abs(np.fft.rfft(data[0, 0])) ** 2
    freqs = np.fft.rfftfreq(1250, 1 / 125)
    assert spectrum[freqs > 12].sum() < 1e-3 * spectrum.sum()
    with pytest.raises(v.CaseError, match="shorter than one 10 s window"):
        v.case_windows(raw[:, : 5 * FS], FS, None, ["PPG", "ECG"], v.CHANNELS, OPTIONS)


def test_synthetic_cases_are_real_vital_files_with_shared_rhythm(cases):
    import vitaldb

    vf = vitaldb.VitalFile(str(cases / "0001.vital"))
    assert {"SNUADC/ECG_II", "SNUADC/PLETH", "SNUADC/ART", "Solar8000/HR"} <= set(vf.get_track_names())
    assert vf.trks["SNUADC/PLETH"].srate == 500 and vf.dtend - vf.dtstart == pytest.approx(90)
    truth = pd.read_csv(cases / "ground_truth.csv", index_col="caseid")
    raw, fs, hr = v.read_case(cases / "0002.vital", ["ECG", "PPG"], v.CHANNELS)
    assert fs == 500 and raw.shape == (2, 45000) and np.nanmean(hr) == pytest.approx(truth.loc[2, "hr_mean"], abs=2)
    # PPG lags ECG by the pulse transit delay (plus the time to its peak): the cross-correlation peak says so
    n = int(20 * fs)
    ecg, ppg = (np.nan_to_num(x[:n] - np.nanmean(x[:n])) for x in raw)
    lags = np.arange(0, int(0.6 * fs))
    lag = lags[np.argmax([np.dot(ecg[: -lags[-1]], ppg[k: k + len(ecg) - lags[-1]]) for k in lags])] / fs
    assert truth.loc[2, "ptt_ppg_s"] < lag < truth.loc[2, "ptt_ppg_s"] + 0.3
    again = generate_vitaldb(cases.parent / "again", cases=1, seed=0, minutes=1.5)  # same seed, same signals
    first, second = (v.read_case(root / "0001.vital", ["ECG", "PPG"], v.CHANNELS)[0] for root in (cases, again))
    np.testing.assert_array_equal(first, second)


def test_splits_are_patient_level_and_fasttrack_is_a_subset(cases, tmp_path):
    clinical = pd.read_csv(cases / "clinical_data.csv")
    subject = {f"{c:04d}": s for c, s in zip(clinical.caseid, clinical.subjectid, strict=True)}
    full = v.prepare_splits(cases, "full", seed=3)
    assert sorted(sum((full[s] for s in v.SPLITS), [])) == sorted(subject)
    owners = {s: {subject[c] for c in full[s]} for s in v.SPLITS}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    fast = v.prepare_splits(cases, "fasttrack", seed=3, fasttrack_cases=3)
    assert 3 <= sum(len(fast[s]) for s in v.SPLITS) <= 4  # whole patients
    path = v.write_splits(fast, tmp_path)
    assert path.name == "splits_fasttrack.json" and json.loads(path.read_text())["train"] == fast["train"]
    with pytest.raises(BioexpError, match="unknown split mode"):
        v.prepare_splits(cases, "quick")


def test_bad_cases_are_skipped_and_counted_and_no_windows_is_an_error(cases, tmp_path):
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "0001.vital").write_bytes((cases / "0001.vital").read_bytes())
    (root / "0002.vital").write_bytes(b"not a vital file")
    (root / "0003.vital").write_bytes((cases / "0003.vital").read_bytes()[:500])  # truncated
    generate_vitaldb(tmp_path / "short", cases=1, minutes=0.2)  # 12 s: the dropout may eat the only window
    (root / "0004.vital").write_bytes((tmp_path / "short" / "0001.vital").read_bytes())
    windows = v.build_windows(root, ["0001", "0002", "0003", "0004", "0005"], ["PPG", "ECG", "ART"],
                              channel_specs={"ART": {"track": "SNUADC/NOPE"}})
    skipped = windows.summary["skipped"]
    assert set(skipped) == {"0001", "0002", "0003", "0004", "0005"} and len(windows.data) == 0
    assert "missing tracks ['SNUADC/NOPE']" in skipped["0001"] and "unreadable" in skipped["0002"]
    assert skipped["0005"] == "no such file"
    windows = v.build_windows(root, ["0001", "0002", "0003"], ["PPG", "ECG"])
    assert windows.summary["cases_used"] == 1 and len(windows.data) > 0
    assert "no samples" in windows.summary["skipped"]["0003"]
    assert "skipped 2 case(s)" in v.describe(windows.summary)
    dm = v.VitalDBDataModule(str(tmp_path / "broken"), str(tmp_path / "w"), split_fractions=[1.0, 0.0, 0.0])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0002.vital").write_bytes(b"junk")
    with pytest.raises(BioexpError, match="no usable train windows"):
        dm.prepare_data()


def test_datamodule_builds_reuses_and_rebuilds_stale_windows(cases, tmp_path):
    kwargs = {"root": str(cases), "windows_dir": str(tmp_path / "w"), "batch_size": 4, "split_mode": "full"}
    dm = v.VitalDBDataModule(**kwargs)
    dm.prepare_data()
    train = tmp_path / "w" / "train_windows.npz"
    assert (tmp_path / "w" / "splits_full.json").is_file() and train.is_file()
    assert dm.dims == {"in_channels": 2, "input_length": 1250, "channels": ["PPG", "ECG"]}
    dm.setup()
    x, hr = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 2, 1250) and hr.shape == (4,) and 40 < float(hr.mean()) < 130
    mtime = train.stat().st_mtime_ns
    v.VitalDBDataModule(**kwargs).prepare_data()
    assert train.stat().st_mtime_ns == mtime  # unchanged options: reused
    v.VitalDBDataModule(**kwargs, windows={"flat_seconds": 0.5}).prepare_data()
    assert train.stat().st_mtime_ns != mtime  # changed options: rebuilt
    with pytest.raises(BioexpError, match="holds channels"):
        v.VitalDBDataModule(None, str(tmp_path / "w"), channels=["ECG"]).prepare_data()


def test_val_is_held_out_from_train_when_absent(cases, tmp_path):
    windows = v.build_windows(cases, ["0001", "0002"], ["PPG", "ECG"])
    (tmp_path / "w").mkdir()
    windows.save(tmp_path / "w" / "train_windows.npz", "x")
    dm = v.VitalDBDataModule(None, str(tmp_path / "w"), seed=0)
    out = dm.windows()
    n = len(windows.data)
    assert len(out["val"].data) == round(0.1 * n) and len(out["train"].data) == n - round(0.1 * n)
    assert out["test"] is out["val"]
    with pytest.raises(BioexpError, match="not found"):
        v.VitalDBDataModule(None, str(tmp_path / "nothing")).prepare_data()


def test_cli_prepare_splits_and_build_windows(cases, tmp_path, capsys):
    assert v.main(["prepare-splits", "--cases-dir", str(cases), "--mode", "fasttrack", "--case-set", "bis",
                   "--output", str(tmp_path)]) == 0
    split_file = tmp_path / "splits_fasttrack.json"
    (tmp_path / "windows.yaml").write_text("flat_seconds: 2.0\n")
    assert v.main(["build-windows", "--split-file", str(split_file), "--split", "train", "--outdir",
                   str(tmp_path / "win"), "--windows-yaml", str(tmp_path / "windows.yaml")]) == 0
    windows = v.Windows.load(tmp_path / "win" / "train_windows.npz")
    assert windows.data.shape[1:] == (2, 1250) and set(windows.case_ids) <= set(json.loads(split_file.read_text())
                                                                                ["train"])
    assert v.main(["build-windows", "--split-file", str(tmp_path / "none.json"), "--outdir", str(tmp_path)]) == 1
    assert "prepare-splits" in capsys.readouterr().err


def test_real_wfdb_record_v102s_gives_windows():
    record = shared_data("wfdb", "v102s")
    windows = v.build_windows(record.parent, ["v102s", "100"], ["PPG", "ECG"])
    assert windows.summary["skipped"] == {"100": "no PPG channel (looked for ['PLETH', 'PPG'], record has "
                                                 "['MLII', 'V5'])"}
    assert windows.data.shape[1:] == (2, 1250) and 10 <= len(windows.data) <= 30  # 300 s at 250 Hz
    assert np.isfinite(windows.data).all() and np.isnan(windows.hr).all()
