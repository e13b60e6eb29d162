"""WFDB reading, resampling and cropping, on real PhysioNet records."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import wfdb

from bioexp.data.ecg_io import STANDARD_LEADS, RecordError, crop_windows, r_peaks, read_leads, resample
from tests.conftest import shared_data


def test_reads_the_12_standard_leads_of_a_real_ptb_record():
    x, fs = read_leads(shared_data("wfdb", "s0010_re"))
    assert fs == 1000.0 and x.shape == (12, 38400) and x.dtype == np.float32
    # Header: gain 2000 adu/mV, first samples -489 (i), -458 (ii), 31 (iii) ... -> physical mV.
    np.testing.assert_allclose(x[:3, 0], [-489 / 2000, -458 / 2000, 31 / 2000], atol=1e-6)
    # The Frank leads vx vy vz live in a second file and are not part of the 12 standard leads.
    reference = wfdb.rdrecord(str(shared_data("wfdb", "s0010_re")), channel_names=["v6"]).p_signal[:, 0]
    np.testing.assert_allclose(x[STANDARD_LEADS.index("V6")], reference, atol=1e-6)


def test_resample_real_record_to_100hz_and_crop_10s_windows():
    x, fs = read_leads(shared_data("wfdb", "s0010_re"))
    y = resample(x, fs, 100)
    assert y.shape == (12, 3840)
    windows = crop_windows(y, 1000)
    assert windows.shape == (3, 12, 1000)
    np.testing.assert_array_equal(windows[1], y[:, 1000:2000])
    # Anti-aliased: the 100 Hz signal follows a 10-sample moving average of the 1000 Hz one.
    smooth = x[1, : 3840 * 10].reshape(-1, 10).mean(axis=1)
    assert np.corrcoef(y[1], smooth)[0, 1] > 0.99


def test_resample_keeps_passband_and_removes_aliases():
    t = np.arange(5000) / 500
    slow, fast = np.sin(2 * np.pi * 5 * t), np.sin(2 * np.pi * 70 * t)  # 70 Hz would alias to 30 Hz at 100 Hz
    y = resample(np.stack([slow, fast]).astype(np.float32), 500, 100)
    assert y.shape == (2, 1000)
    assert np.abs(y[0, 100:-100]).max() == pytest.approx(1.0, abs=0.02)
    assert np.abs(y[1, 100:-100]).max() < 0.05


def test_invalid_samples_are_errors_unless_gaps_are_filled():
    record = shared_data("wfdb", "v102s")  # real ICU recording: WFDB marks 3 samples of lead II invalid
    with pytest.raises(RecordError, match="invalid"):
        read_leads(record, leads=("II", "V"))
    x, _ = read_leads(record, leads=("ii", "v"), fill_gaps=True)  # lead names match case-insensitively
    assert x.shape == (2, 75000) and np.isfinite(x).all()
    raw = wfdb.rdrecord(str(record), channel_names=["II"]).p_signal[:, 0]
    assert np.isnan(raw[5591]) and x[0, 5591] == pytest.approx((raw[5590] + raw[5592]) / 2, abs=1e-6)


def test_missing_leads_are_named():
    with pytest.raises(RecordError, match=r"leads \['AVR'\] not in record"):
        read_leads(shared_data("wfdb", "v102s"), leads=("II", "AVR"))


def test_missing_and_truncated_records_are_record_errors(tmp_path):
    with pytest.raises(RecordError, match="header missing"):
        read_leads(tmp_path / "nope")
    for f in shared_data("wfdb").glob("s0010_re.*"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "s0010_re.dat").chmod(0o644)
    with open(tmp_path / "s0010_re.dat", "r+b") as f:
        f.truncate(300_000)
    with pytest.raises(RecordError, match="truncated"):
        read_leads(tmp_path / "s0010_re")
    (tmp_path / "s0010_re.dat").unlink()
    with pytest.raises(RecordError, match="signal file missing"):
        read_leads(tmp_path / "s0010_re")


def _corrupt_header(text: str, case: str) -> bytes:
    return {"garbage": b"\x00\xff junk\n\x01", "empty": b"", "short": "\n".join(text.splitlines()[:3]).encode(),
            "format": text.replace(" 16 ", " 99 ").encode(), "latin1": "\xf1\xe9\n".encode("latin-1")}[case]


@pytest.mark.parametrize("case", ["garbage", "empty", "short", "format", "latin1", "empty_signal"])
def test_every_kind_of_corrupt_record_is_a_record_error(tmp_path, case):
    for f in shared_data("wfdb").glob("s0010_re.*"):
        shutil.copy(f, tmp_path / f.name)
        (tmp_path / f.name).chmod(0o644)
    if case == "empty_signal":
        (tmp_path / "s0010_re.dat").write_bytes(b"")
    else:
        header = tmp_path / "s0010_re.hea"
        header.write_bytes(_corrupt_header(header.read_text(), case))
    with pytest.raises(RecordError, match="unreadable|truncated|not in record"):
        read_leads(tmp_path / "s0010_re")


def test_a_bug_while_reading_is_not_mistaken_for_a_bad_record(monkeypatch):
    monkeypatch.setattr(wfdb, "rdrecord", lambda *a, **k: None.p_signal)  # AttributeError: a code bug
    with pytest.raises(AttributeError):
        read_leads(shared_data("wfdb", "s0010_re"))


def test_r_peaks_match_the_cardiologists_annotations_of_a_real_record():
    record = shared_data("wfdb", "100")  # MIT-BIH 100: 30 min, 2,273 annotated beats
    x, fs = read_leads(record, leads=("MLII", "V5"))
    annotation = wfdb.rdann(str(record), "atr")
    beats = annotation.sample[np.isin(annotation.symbol, ["N", "A", "V"])]
    for signal, rate in ((x, fs), (resample(x, fs, 100), 100.0)):
        found = r_peaks(signal, rate) * (fs / rate)
        error = np.abs(found[None, :] - beats[:, None]).min(axis=1) / fs
        precision = np.mean(np.abs(beats[None, :] - found[:, None]).min(axis=1) / fs <= 0.1)
        assert np.mean(error <= 0.1) > 0.995 and precision > 0.995
        assert np.median(error) < 0.015
