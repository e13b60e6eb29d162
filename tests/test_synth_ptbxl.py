"""The synthetic PTB-XL must be read by a PTB-XL loader unchanged and look like ECGs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from scipy.signal import find_peaks, medfilt, resample_poly

from bioexp.data.synth import ecg, generate_ptbxl, ptbxl

RECORDS = 160
SEED = 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_ptbxl(tmp_path_factory.mktemp("synth") / "ptbxl", RECORDS, SEED, high_rate=True)


@pytest.fixture(scope="module")
def database(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "ptbxl_database.csv", index_col="ecg_id")


@pytest.fixture(scope="module")
def truth(dataset: Path) -> pd.DataFrame:
    return pd.read_csv(dataset / "ground_truth.csv", index_col="ecg_id")


@pytest.fixture(scope="module")
def signals(dataset: Path, database: pd.DataFrame) -> np.ndarray:
    """All 100 Hz records as (records, 1000, 12) in mV, read the way PTB-XL loaders do."""
    return np.stack([wfdb.rdsamp(str(dataset / name))[0] for name in database["filename_lr"]])


def r_peaks(x: np.ndarray, fs: int = 100) -> np.ndarray:
    """QRS complexes as maxima of the 80 ms-smoothed squared slope (one lead or all leads)."""
    energy = np.diff(x, axis=0) ** 2
    if energy.ndim == 2:
        energy = energy.sum(axis=1)
    smooth = np.convolve(energy, np.ones(int(0.08 * fs)), mode="same")
    peaks, _ = find_peaks(smooth, height=0.3 * np.percentile(smooth, 99), distance=int(0.3 * fs))
    return peaks


def qrs_voltage(x: np.ndarray) -> float:
    """Sum over leads of peak-to-peak amplitude after removing the baseline."""
    baseline = np.stack([medfilt(lead, 41) for lead in x.T], axis=1)
    return float(np.ptp(x - baseline, axis=0).sum())


def codes(database: pd.DataFrame) -> pd.Series:
    return database["scp_codes"].map(ast.literal_eval)


# ------------------------------------------------------------------ format


def test_layout_matches_ptbxl(dataset: Path, database: pd.DataFrame):
    top = {p.name for p in dataset.iterdir()}
    assert top == {"ptbxl_database.csv", "scp_statements.csv", "ground_truth.csv", "records100", "records500"}
    header = (dataset / "ptbxl_database.csv").read_text().splitlines()[0]
    assert header.split(",") == list(ptbxl.DATABASE_COLUMNS)
    assert (dataset / "scp_statements.csv").read_bytes() == (ptbxl.RESOURCES / "scp_statements.csv").read_bytes()
    assert list(pd.read_csv(dataset / "ground_truth.csv").columns) == list(ptbxl.TRUTH_COLUMNS)
    assert sorted(p.name for p in (dataset / "records100").iterdir()) == ["00000"]
    assert database.loc[1, "filename_lr"] == "records100/00000/00001_lr"
    assert database.loc[RECORDS, "filename_hr"] == f"records500/00000/{RECORDS:05d}_hr"
    for name in database["filename_lr"]:
        assert (dataset / f"{name}.hea").is_file() and (dataset / f"{name}.dat").stat().st_size == 1000 * 12 * 2


def test_record_paths_use_folders_of_1000():
    assert ptbxl.record_path(999, "lr") == "records100/00000/00999_lr"
    assert ptbxl.record_path(1001, "lr") == "records100/01000/01001_lr"
    assert ptbxl.record_path(21837, "hr") == "records500/21000/21837_hr"


def test_database_values(database: pd.DataFrame):
    assert list(database.index) == list(range(1, RECORDS + 1))
    assert database["patient_id"].dtype == float and (database["patient_id"] % 1 == 0).all()
    assert database["recording_date"].str.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d").all()
    assert database["recording_date"].is_monotonic_increasing
    assert database["validated_by_human"].all()
    assert database["sex"].isin([0, 1]).all()
    parsed = codes(database)
    assert all(isinstance(c, dict) and c for c in parsed)
    assert database["strat_fold"].between(1, 10).all()


def test_patients_stay_in_one_fold_and_folds_are_balanced(database: pd.DataFrame):
    assert (database.groupby("patient_id")["strat_fold"].nunique() == 1).all()
    per_patient = database.groupby("patient_id").size()
    assert 1.05 < per_patient.mean() < 1.35 and per_patient.max() >= 2
    sizes = database["strat_fold"].value_counts()
    assert len(sizes) == 10 and sizes.max() - sizes.min() <= 3


def test_headers_are_ptbxl_headers(dataset: Path, database: pd.DataFrame):
    for rate, fs, length in (("lr", 100, 1000), ("hr", 500, 5000)):
        for name in database[f"filename_{rate}"].iloc[[0, -1]]:
            header = wfdb.rdheader(str(dataset / name))
            assert (header.fs, header.n_sig, header.sig_len) == (fs, 12, length)
            assert header.sig_name == list(ecg.LEADS)
            assert header.fmt == ["16"] * 12
            assert header.adc_gain == [1000.0] * 12
            assert header.baseline == [0] * 12
            assert header.units == ["mV"] * 12
            assert header.file_name == [f"{Path(name).name}.dat"] * 12


def test_written_signal_round_trips(tmp_path: Path):
    rng = np.random.default_rng(0)
    record = ecg.simulate(ecg.Rhythm(), ecg.normal_morphology(rng, 50.0), rng)
    ptbxl.write_record(tmp_path / "00001_lr", record.low, 100)
    read, fields = wfdb.rdsamp(str(tmp_path / "00001_lr"))
    assert read.shape == (1000, 12) and fields["fs"] == 100
    assert np.abs(read - record.low.T).max() <= 0.0005 + 1e-9
    raw = np.fromfile(tmp_path / "00001_lr.dat", dtype="<i2").reshape(1000, 12)
    assert np.array_equal(raw / 1000.0, read)


def test_einthoven_and_goldberger_hold(signals: np.ndarray):
    i, ii, iii, avr, avl, avf = (signals[..., k] for k in range(6))
    quantum = 0.0015
    assert np.abs(iii - (ii - i)).max() <= quantum
    assert np.abs(avr + (i + ii) / 2).max() <= quantum
    assert np.abs(avl - (i - ii / 2)).max() <= quantum
    assert np.abs(avf - (ii - i / 2)).max() <= quantum


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path):
    one = generate_ptbxl(tmp_path / "one", 24, seed=3, workers=1)
    two = generate_ptbxl(tmp_path / "two", 24, seed=3, workers=2)
    other = generate_ptbxl(tmp_path / "other", 24, seed=4, workers=1)
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    for name in files:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert (one / "ptbxl_database.csv").read_bytes() != (other / "ptbxl_database.csv").read_bytes()
    first_dat = next(name for name in files if name.suffix == ".dat")
    assert (one / first_dat).read_bytes() != (other / first_dat).read_bytes()


def test_high_rate_agrees_with_low_rate(dataset: Path, database: pd.DataFrame, signals: np.ndarray):
    for k in (0, RECORDS // 2, RECORDS - 1):
        high, fields = wfdb.rdsamp(str(dataset / database["filename_hr"].iloc[k]))
        assert high.shape == (5000, 12) and fields["fs"] == 500
        decimated = resample_poly(high, 1, 5, axis=0)
        assert np.abs(decimated[20:-20] - signals[k, 20:-20]).max() < 0.01


# ------------------------------------------------------------------ signals


def test_normal_beat_polarity_and_r_progression():
    """Upright P/QRS/T in II, negative in aVR, R/S growing from V1 to V6."""
    morph = ecg.normal_morphology(np.random.default_rng(1), 55.0)
    _, qrs = ecg.template(ecg.qrs_waves(morph))
    _, t_wave = ecg.template(ecg.repolarisation(morph, 400.0, morph.qrs_ms)[:1])
    _, p_wave = ecg.template(ecg.atrial_waves(morph))
    leads = {name: k for k, name in enumerate(ecg.LEADS)}

    def project(dipole: np.ndarray) -> np.ndarray:
        return ecg.to_twelve_leads(dipole, np.zeros((9, dipole.shape[1])))

    q, t, p = project(qrs), project(t_wave), project(p_wave)
    assert q[leads["II"]].max() > 0.7 > -q[leads["II"]].min()
    assert q[leads["AVR"]].min() < -0.4 and t[leads["AVR"]].min() < 0
    assert 0.1 <= p[leads["II"]].max() <= 0.3 and 0.15 <= t[leads["II"]].max() <= 0.6
    ratio = [q[leads[f"V{n}"]].max() / -q[leads[f"V{n}"]].min() for n in range(1, 7)]
    assert ratio[0] < 0.5 < 2 < ratio[4] and ratio[0] < ratio[2] < ratio[4]


def test_infarct_makes_wide_deep_q_and_st_elevation_in_facing_leads():
    rng = np.random.default_rng(2)
    base = ecg.normal_morphology(rng, 50.0)
    mi = ecg.infarct(base, "inferior", rng, st_mv=0.2, t_invert=0.0)
    lead_iii = ecg.LEADS.index("III")
    _, dipole = ecg.template(ecg.qrs_waves(mi))
    anchor, with_st = ecg.template([*ecg.qrs_waves(mi), *ecg.repolarisation(mi, 400.0, mi.qrs_ms)])
    iii = ecg.to_twelve_leads(dipole, np.zeros((9, dipole.shape[1])))[lead_iii]
    q_wave = iii[np.argmax(iii < -0.02) :] < 0
    q_ms = (len(q_wave) if q_wave.all() else np.argmin(q_wave)) * 1000 / ecg.FS
    assert iii.min() < -0.3 and q_ms >= 40
    st = ecg.to_twelve_leads(with_st, np.zeros((9, with_st.shape[1])))[lead_iii]
    j_point = anchor + round(mi.qrs_ms / 2) + 10
    assert st[j_point] > 0.1


def test_measured_heart_rate_matches_ground_truth(
    signals: np.ndarray, truth: pd.DataFrame, database: pd.DataFrame
) -> None:
    """R peaks on lead II of sinus records with a dominant R in II (axis 0-100 deg)."""
    sinus = (
        (truth["rhythm"] == "sinus")
        & (truth[["n_pvc", "n_pac", "paced"]].sum(axis=1) == 0)
        & truth["qrs_axis_deg"].between(0, 100)
        & database["burst_noise"].isna()
    ).to_numpy()
    assert sinus.sum() > 50
    measured = np.array([6000.0 / np.diff(r_peaks(x[:, 1])).mean() for x in signals[sinus]])
    errors = np.abs(measured - truth["heart_rate_bpm"].to_numpy()[sinus])
    assert np.median(errors) < 1.0 and errors.max() < 3.0


def test_conduction_defects_widen_qrs_or_prolong_pr(truth: pd.DataFrame, database: pd.DataFrame):
    parsed = codes(database)
    bbb = parsed.map(lambda c: bool({"CLBBB", "CRBBB"} & c.keys()) and "PACE" not in c)
    first_degree = parsed.map(lambda c: "1AVB" in c and not {"WPW", "PACE"} & c.keys())
    assert bbb.sum() >= 3 and first_degree.sum() >= 1
    assert (truth.loc[bbb, "qrs_ms"] >= 120).all()
    assert (truth.loc[first_degree, "pr_ms"] > 200).all()
    narrow = parsed.map(lambda c: set(c) <= {"NORM", "SR"})
    assert truth.loc[narrow, "qrs_ms"].between(80, 110).all()
    assert truth.loc[narrow, "pr_ms"].between(120, 200).all()


def test_hypertrophy_has_higher_qrs_voltage(signals: np.ndarray, truth: pd.DataFrame):
    voltage = np.array([qrs_voltage(x) for x in signals])
    hyp = truth["HYP"].to_numpy() == 1
    norm = (truth["NORM"].to_numpy() == 1) & ~hyp
    assert hyp.sum() >= 8 and norm.sum() >= 30
    assert voltage[hyp].mean() > 1.3 * voltage[norm].mean()


def test_atrial_fibrillation_is_irregular_without_p_waves(signals: np.ndarray, truth: pd.DataFrame):
    afib = (truth["rhythm"] == "afib").to_numpy()
    sinus = ((truth["rhythm"] == "sinus") & (truth["n_pvc"] + truth["n_pac"] == 0)).to_numpy()
    assert afib.sum() >= 5

    def irregularity(x: np.ndarray) -> float:
        rr = np.diff(r_peaks(x))
        return float(np.sqrt(np.mean(np.diff(rr) ** 2)) / rr.mean())

    measured = np.array([irregularity(x) for x in signals])
    assert np.median(measured[afib]) > 4 * np.median(measured[sinus])
    assert (truth.loc[afib, "p_wave"] == 0).all() and truth.loc[afib, "pr_ms"].isna().all()


def test_rate_labels_match_true_rate(truth: pd.DataFrame, database: pd.DataFrame):
    parsed = codes(database)
    plain = (truth["rhythm"] == "sinus") & (truth["n_pvc"] + truth["n_pac"] + truth["paced"] == 0)
    for code, low, high in (("SR", 58, 102), ("STACH", 100, 160), ("SBRAD", 35, 60)):
        rows = plain & parsed.map(lambda c, code=code: code in c)
        assert truth.loc[rows, "heart_rate_bpm"].between(low, high).all(), code


# ------------------------------------------------------------------ behaviour


def test_existing_output_is_refused_and_nothing_is_left_behind(tmp_path: Path):
    out = tmp_path / "taken"
    out.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        generate_ptbxl(out, 3)
    generate_ptbxl(out, 3, overwrite=True)
    assert (out / "ptbxl_database.csv").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_interrupted_run_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def fail(task: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ptbxl, "_make_record", fail)
    with pytest.raises(KeyboardInterrupt):
        generate_ptbxl(tmp_path / "out", 3, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_and_refuses_existing_out(tmp_path: Path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "bioexp.data.synth", "ptbxl", "--out", str(out), "--records", "4"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and "wrote 4" in done.stdout
    assert len(pd.read_csv(out / "ptbxl_database.csv")) == 4
    again = subprocess.run(command, capture_output=True, text=True, check=False)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr
