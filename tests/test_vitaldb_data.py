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
    rec = v.Recording(list(raw), [FS, FS], hr)
    data, starts, rates, rejected = v.case_windows(rec, ["PPG", "ECG"], v.CHANNELS, OPTIONS)
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
        v.case_windows(v.Recording(list(raw[:, : 5 * FS]), [FS, FS]), ["PPG", "ECG"], v.CHANNELS, OPTIONS)


def test_synthetic_cases_are_real_vital_files_with_shared_rhythm(cases):
    import vitaldb

    vf = vitaldb.VitalFile(str(cases / "0001.vital"))
    assert {"SNUADC/ECG_II", "SNUADC/PLETH", "SNUADC/ART", "Solar8000/HR"} <= set(vf.get_track_names())
    assert vf.trks["SNUADC/PLETH"].srate == 500 and vf.dtend - vf.dtstart == pytest.approx(90)
    truth = pd.read_csv(cases / "ground_truth.csv", index_col="caseid")
    rec = v.read_case(cases / "0002.vital", ["ECG", "PPG"], v.CHANNELS)
    raw, fs, hr = np.stack(rec.signals), rec.rates[0], rec.hr
    assert rec.rates == [500, 500] and raw.shape == (2, 45000)
    assert np.nanmean(hr) == pytest.approx(truth.loc[2, "hr_mean"], abs=2)
    # PPG lags ECG by the pulse transit delay (plus the time to its peak): the cross-correlation peak says so
    n = int(20 * fs)
    ecg, ppg = (np.nan_to_num(x[:n] - np.nanmean(x[:n])) for x in raw)
    lags = np.arange(0, int(0.6 * fs))
    lag = lags[np.argmax([np.dot(ecg[: -lags[-1]], ppg[k: k + len(ecg) - lags[-1]]) for k in lags])] / fs
    assert truth.loc[2, "ptt_ppg_s"] < lag < truth.loc[2, "ptt_ppg_s"] + 0.3
    again = generate_vitaldb(cases.parent / "again", cases=1, seed=0, minutes=1.5)  # same seed, same signals
    first, second = (np.stack(v.read_case(root / "0001.vital", ["ECG", "PPG"], v.CHANNELS).signals)
                     for root in (cases, again))
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
                              channel_specs={"ART": {"track": "SNUADC/NOPE", "wfdb": []}})
    skipped = windows.summary["skipped"]
    assert set(skipped) == {"0001", "0002", "0003", "0004", "0005"} and len(windows.data) == 0
    assert "missing tracks ['SNUADC/NOPE']" in skipped["0001"] and "unreadable" in skipped["0002"]
    assert skipped["0005"] == "no such file"
    windows = v.build_windows(root, ["0001", "0002", "0003"], ["PPG", "ECG"])
    assert windows.summary["cases_used"] == 1 and len(windows.data) > 0
    assert "no samples" in windows.summary["skipped"]["0003"]
    assert "skipped 2 case(s)" in v.describe(windows.summary)
    dm = v.VitalDBDataModule(str(tmp_path / "broken"), None, split_fractions=[1.0, 0.0, 0.0])
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0002.vital").write_bytes(b"junk")
    with pytest.raises(BioexpError, match="no usable train windows"):
        dm.prepare_data()


def test_datamodule_builds_reuses_and_puts_other_settings_in_a_new_folder(cases, tmp_path):
    root = tmp_path / "cases"
    root.mkdir()
    for p in cases.iterdir():
        if p.is_file():
            (root / p.name).write_bytes(p.read_bytes())
    kwargs = {"root": str(root), "batch_size": 4, "split_mode": "full", "workers": 2}
    dm = v.VitalDBDataModule(**kwargs)
    dm.prepare_data()
    where = dm.windows_dir()
    assert where.parent == root / ".bioexp_windows" and (where / "splits_full.json").is_file()
    train = where / "train_windows.npy"
    assert dm.dims == {"in_channels": 2, "input_length": 1250, "channels": ["PPG", "ECG"]}
    dm.setup()
    assert isinstance(dm.windows()["train"].data, np.memmap)  # read by memory map, not copied
    x, hr = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 2, 1250) and hr.shape == (4,) and 40 < float(hr.mean()) < 130
    # the streamed, parallel build holds exactly the windows of the in-memory one
    split = json.loads((where / "splits_full.json").read_text())
    direct = v.build_windows(root, split["train"], ["PPG", "ECG"])
    np.testing.assert_array_equal(np.load(train), direct.data)
    np.testing.assert_array_equal(dm.windows()["train"].case_ids, direct.case_ids)
    cases_by_split = {s: set(w.case_ids) for s, w in dm.windows().items()}
    assert not cases_by_split["train"] & cases_by_split["val"]
    assert not cases_by_split["val"] & cases_by_split["test"]
    mtime = train.stat().st_mtime_ns
    v.VitalDBDataModule(**kwargs).prepare_data()
    assert train.stat().st_mtime_ns == mtime  # unchanged settings: reused
    other = v.VitalDBDataModule(**kwargs, windows={"flat_seconds": 0.5})
    other.prepare_data()
    assert other.windows_dir() != where and train.stat().st_mtime_ns == mtime  # new folder, old one untouched
    (root / "0001.vital").touch()  # a changed case rebuilds (only) that folder's split holding it
    v.VitalDBDataModule(**kwargs).prepare_data()
    assert train.stat().st_mtime_ns != mtime or "0001" not in split["train"]
    with pytest.raises(BioexpError, match="holds channels"):
        v.VitalDBDataModule(None, str(where), channels=["ECG"]).prepare_data()


def _user_windows(directory: Path, cases: Path, guide: bool = False) -> dict[str, bytes]:
    """Window files a user made elsewhere (ours before, as .npz; or the guide's data/labels only)."""
    directory.mkdir(parents=True)
    for split, ids in (("train", ["0001", "0002", "0003", "0004"]), ("val", ["0005"]), ("test", ["0006"])):
        w = v.build_windows(cases, ids, ["PPG", "ECG"])
        arrays = {"data": w.data, "labels": w.hr} if guide else {"data": w.data, "case_ids": w.case_ids, "hr": w.hr}
        np.savez(directory / f"{split}_windows.npz", **arrays)
    (directory / "splits_fasttrack.json").write_text('{"mine": true}\n')
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def test_user_window_files_are_used_as_they_are_and_never_written(cases, tmp_path):
    own = tmp_path / "own"
    before = _user_windows(own, cases)
    dm = v.VitalDBDataModule(None, str(own), batch_size=4)
    out = dm.windows()
    assert [len(out[s]) for s in v.SPLITS] == [len(np.load(own / f"{s}_windows.npz")["data"]) for s in v.SPLITS]
    # a root given as well: its windows go beside, the user's files stay byte-identical
    built = v.VitalDBDataModule(str(cases), str(own), batch_size=4, split_mode="full", workers=1)
    built.prepare_data()
    assert built.windows_dir() == own / ".bioexp_windows" / built.settings_key()
    assert {p.name: p.read_bytes() for p in own.iterdir() if p.is_file()} == before
    with pytest.raises(BioexpError, match="data=vitaldb_synth would train on synthetic cases"):
        v.VitalDBDataModule(str(tmp_path / "synth"), str(own), synthesize={"cases": 2, "minutes": 0.5}).prepare_data()
    assert not (tmp_path / "synth").exists()


def test_val_is_held_out_by_case_and_a_missing_test_set_is_an_error(cases, tmp_path):
    windows = v.build_windows(cases, ["0001", "0002", "0003", "0004", "0005"], ["PPG", "ECG"])
    (tmp_path / "w").mkdir()
    np.savez(tmp_path / "w" / "train_windows.npz", data=windows.data, case_ids=windows.case_ids, hr=windows.hr)
    with pytest.raises(BioexpError, match="data.test_on_val=true"):
        v.VitalDBDataModule(None, str(tmp_path / "w")).prepare_data()
    out = v.VitalDBDataModule(None, str(tmp_path / "w"), test_on_val=True, val_fraction=0.2).windows()
    assert len(set(out["val"].case_ids)) == 1 and not set(out["val"].case_ids) & set(out["train"].case_ids)
    assert len(out["train"]) + len(out["val"]) == len(windows) and out["test"] is out["val"]
    with pytest.raises(BioexpError, match="not found"):
        v.VitalDBDataModule(None, str(tmp_path / "nothing")).prepare_data()
    with pytest.raises(BioexpError, match="needs data.root"):
        v.VitalDBDataModule(None, None)


def test_guide_window_files_are_accepted_with_one_warning(cases, tmp_path, caplog):
    _user_windows(tmp_path / "g", cases, guide=True)
    with caplog.at_level("WARNING"):
        out = v.VitalDBDataModule(None, str(tmp_path / "g")).windows()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "patient split of these files cannot be checked" in warnings[0]
    assert out["train"].case_ids is None and np.isfinite(out["train"].hr).all()  # labels read as the target
    (tmp_path / "g" / "val_windows.npz").unlink()
    with caplog.at_level("WARNING"):
        out = v.VitalDBDataModule(None, str(tmp_path / "g"), test_on_val=False).windows()
    assert len(out["val"]) == round(0.1 * (len(out["train"]) + len(out["val"])))


def test_cli_prepare_splits_build_windows_and_merge_shards(cases, tmp_path, capsys):
    assert v.main(["prepare-splits", "--cases-dir", str(cases), "--mode", "fasttrack", "--case-set", "bis",
                   "--output", str(tmp_path)]) == 0
    split_file = tmp_path / "splits_fasttrack.json"
    split = json.loads(split_file.read_text())
    truth = pd.read_csv(cases / "ground_truth.csv", dtype={"caseid": str})
    bis = {c.zfill(4) for c in truth.loc[truth.bis, "caseid"]}
    assert set(split["train"] + split["val"] + split["test"]) == bis  # from the cached case index
    (tmp_path / "windows.yaml").write_text("flat_seconds: 2.0\n")
    common = ["--split-file", str(split_file), "--split", "train", "--windows-yaml", str(tmp_path / "windows.yaml")]
    assert v.main(["build-windows", *common, "--outdir", str(tmp_path / "win")]) == 0
    whole = v.Windows.load(tmp_path / "win" / "train_windows.npy")
    assert whole.data.shape[1:] == (2, 1250) and set(whole.case_ids) <= set(split["train"])
    # two "machines", each a case-id range, then one merge: the same windows
    for i in range(2):
        assert v.main(["build-windows", *common, "--outdir", str(tmp_path / "sharded"), "--shard", f"{i}/2"]) == 0
    assert "merge-windows" in capsys.readouterr().out
    assert v.main(["merge-windows", *common, "--outdir", str(tmp_path / "sharded")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "sharded" / "train_windows.npy"), np.asarray(whole.data))
    (tmp_path / "windows.yaml").write_text("flat_seconds: 3.0\n")  # a shard made with other settings is refused
    assert v.main(["merge-windows", *common, "--outdir", str(tmp_path / "sharded")]) == 1
    assert "built with other settings" in capsys.readouterr().err
    assert v.main(["build-windows", "--split-file", str(tmp_path / "none.json"), "--outdir", str(tmp_path)]) == 1
    assert "prepare-splits" in capsys.readouterr().err
    assert v.main(["build-windows", *common, "--outdir", str(tmp_path / "x"), "--shard", "2/2"]) == 1


def test_real_wfdb_record_v102s_gives_windows():
    record = shared_data("wfdb", "v102s")
    windows = v.build_windows(record.parent, ["v102s", "100"], ["PPG", "ECG"])
    assert windows.summary["skipped"] == {"100": "no PPG channel (looked for ['PLETH', 'PPG'], record has "
                                                 "['MLII', 'V5'])"}
    assert windows.data.shape[1:] == (2, 1250) and 10 <= len(windows.data) <= 30  # 300 s at 250 Hz
    assert np.isfinite(windows.data).all() and np.isnan(windows.hr).all()
