"""Synthetic VitalDB cases: real ``.vital`` files with ECG, PPG and arterial pressure at 500 Hz.

One heart rhythm drives all waveforms: beats follow a drifting heart rate with respiratory sinus
arrhythmia; each R peak is followed by the arterial upstroke and, later, the finger PPG upstroke
(pulse transit delays differ per case). Respiration modulates amplitude and baseline. Motion artefacts
(large low-frequency swings, EMG noise; PPG driven into its 0-100 rails), flat-line dropouts (a channel
stuck at one value) and short NaN gaps are the defects the window quality gates must find. Numeric
tracks: ``Solar8000/HR`` (the monitor heart rate, 1 Hz: the fine-tuning target) and, for most cases,
``BIS/BIS``. ``clinical_data.csv`` maps cases to patients (some have two cases) as VitalDB's does,
``ground_truth.csv`` lists each case's rhythm, delays and defects.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

FS = 500
T0 = 1_600_000_000.0  # case start (unix seconds); each case one day later


def _smooth_noise(rng: np.random.Generator, n: int, fs: float, cutoff: float) -> np.ndarray:
    """Unit-std noise low-passed at ``cutoff`` Hz (FFT mask): slow drifts and motion swings."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / fs)
    spec[0] = 0
    spec[freqs > max(cutoff, freqs[1])] = 0  # a short signal keeps its slowest component
    x = np.fft.irfft(spec, n)
    return x / (x.std() + 1e-12)


def _bump(t: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    return np.exp(-0.5 * ((t - mu) / sigma) ** 2)


def simulate_case(rng: np.random.Generator, seconds: float) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """Waveforms at 500 Hz (``ECG`` mV, ``PPG`` 0-100, ``ART`` mmHg), the 1 Hz heart rate, and ground truth."""
    n = int(seconds * FS)
    t = np.arange(n) / FS
    hr0 = rng.uniform(55, 100)
    resp_rate = rng.uniform(0.15, 0.3)  # Hz
    resp = np.sin(2 * np.pi * resp_rate * t + rng.uniform(0, 2 * np.pi))
    hr = hr0 + rng.uniform(3, 8) * _smooth_noise(rng, n, FS, 0.01) + rng.uniform(1, 3) * resp
    beats = np.flatnonzero(np.diff(np.floor(np.cumsum(hr / 60 / FS))) > 0) / FS
    ptt_art, ptt_ppg = rng.uniform(0.08, 0.14), rng.uniform(0.18, 0.30)
    r_amp, t_amp, qt = rng.uniform(0.8, 1.6), rng.uniform(0.15, 0.4), rng.uniform(0.36, 0.42)
    pulse, dia, pp = rng.uniform(15, 30), rng.uniform(60, 80), rng.uniform(35, 55)

    ecg, ppg_pulse, art_pulse = np.zeros(n), np.zeros(n), np.zeros(n)
    span = int(1.0 * FS)
    for i, beat in enumerate(beats):
        rr = beats[i + 1] - beat if i + 1 < len(beats) else 60 / hr0
        centre = int(beat * FS)
        lo, hi = max(0, centre - span), min(n, centre + span)
        s = t[lo:hi] - beat
        scale = np.sqrt(rr)
        ecg[lo:hi] += (0.15 * _bump(s, -0.16, 0.022) - 0.12 * _bump(s, -0.025, 0.008) + r_amp * _bump(s, 0, 0.009)
                       - 0.25 * _bump(s, 0.028, 0.009) + t_amp * _bump(s, qt * scale - 0.1, 0.045 * scale))
        for out, delay in ((art_pulse, ptt_art), (ppg_pulse, ptt_ppg)):
            u = s - delay  # the upstroke starts at the foot: R peak + transit delay
            out[lo:hi] += np.where(u > 0, 1 - np.exp(-u / 0.05), 0) * np.exp(-np.clip(u, 0, None) / (0.35 * rr)) \
                + 0.25 * _bump(u, 0.38 * scale, 0.05)
    ppg_pulse /= ppg_pulse.max() + 1e-12
    art_pulse /= art_pulse.max() + 1e-12
    breath = 1 + 0.1 * resp
    signals = {
        "ECG": ecg * (1 + 0.05 * resp) + 0.08 * _smooth_noise(rng, n, FS, 0.5) + 0.01 * rng.standard_normal(n)
        + 0.01 * np.sin(2 * np.pi * 60 * t),
        "PPG": 50 + 3 * resp + pulse * breath * ppg_pulse + 0.2 * rng.standard_normal(n),
        "ART": dia + 2 * resp + pp * breath * art_pulse + 0.3 * rng.standard_normal(n),
    }
    truth = {"hr_mean": float(hr.mean()), "resp_rate": resp_rate, "ptt_art_s": ptt_art, "ptt_ppg_s": ptt_ppg,
             "artefacts": 0, "dropouts": 0, "nan_gaps": 0}
    _add_defects(rng, signals, seconds, truth)
    return signals, hr[:: FS][: int(seconds)], truth


def _add_defects(rng: np.random.Generator, signals: dict[str, np.ndarray], seconds: float, truth: dict) -> None:
    minutes = seconds / 60
    for _ in range(rng.poisson(0.5 * minutes)):  # motion: big slow swings + EMG; PPG hits its rails
        a = int(rng.uniform(0, seconds - 6) * FS)
        b = a + int(rng.uniform(2, 6) * FS)
        signals["ECG"][a:b] += rng.uniform(4, 8) * _smooth_noise(rng, b - a, FS, 2) + 0.3 * rng.standard_normal(b - a)
        signals["PPG"][a:b] += rng.uniform(50, 90) * _smooth_noise(rng, b - a, FS, 2)
        signals["ART"][a:b] += rng.uniform(20, 40) * _smooth_noise(rng, b - a, FS, 2)
        truth["artefacts"] += 1
    signals["PPG"] = np.clip(signals["PPG"], 0, 100)
    for _ in range(rng.poisson(0.3 * minutes)):  # a lead off: the channel stuck at one value
        a = int(rng.uniform(0, seconds - 12) * FS)
        b = a + int(rng.uniform(3, 12) * FS)
        for name in rng.choice(list(signals), size=rng.integers(1, 3), replace=False):
            signals[name][a:b] = signals[name][a]
        truth["dropouts"] += 1
    if rng.random() < 0.3:  # a short gap in the recording
        a = int(rng.uniform(0, seconds - 3) * FS)
        signals[str(rng.choice(list(signals)))][a:a + int(rng.uniform(0.5, 3) * FS)] = np.nan
        truth["nan_gaps"] += 1


def write_vital(path: Path, signals: dict[str, np.ndarray], hr: np.ndarray, start: float, bis: bool) -> None:
    """A ``.vital`` file with SNUADC waveforms and Solar8000/BIS numerics, as VitalDB records them."""
    import vitaldb

    vf = vitaldb.VitalFile()
    units = {"ECG": ("SNUADC/ECG_II", "mV", -1, 1.5), "PPG": ("SNUADC/PLETH", "", 0, 100),
             "ART": ("SNUADC/ART", "mmHg", 0, 200)}
    for name, x in signals.items():
        track, unit, lo, hi = units[name]
        vf.add_track(track, [{"dt": start, "val": x.astype(np.float32)}], srate=FS, unit=unit, mindisp=lo, maxdisp=hi)
    vf.add_track("Solar8000/HR", [{"dt": start + i, "val": float(round(v))} for i, v in enumerate(hr)], unit="/min")
    if bis:
        vf.add_track("BIS/BIS", [{"dt": start + i, "val": 45.0} for i in range(0, len(hr), 5)])
    vf.dtstart = start  # add_track updates neither
    vf.dtend = start + len(signals["ECG"]) / FS
    vf.to_vital(str(path))


def generate_vitaldb(out: str | Path, cases: int = 40, seed: int = 0, minutes: float = 5.0,
                     overwrite: bool = False) -> Path:
    """Write ``cases`` synthetic cases to ``out`` (``0001.vital`` ...); same seed, same signals.

    An existing ``out`` without cases (e.g. only bioexp's window folder) is filled; one with cases is an
    error unless ``overwrite`` (which replaces the whole folder).
    """
    out = Path(out)
    existing = out.exists() and any(out.glob("*.vital"))
    if existing and not overwrite:
        raise FileExistsError(f"{out} already holds cases; pass --overwrite to replace it")
    if minutes * 60 < 12:
        raise ValueError(f"cases must last at least 12 s (one window and its defects), got {minutes} min")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    subjects = np.cumsum(rng.random(cases) > 0.15)  # ~15% of cases are a patient's second case
    clinical, truth_rows = [], []
    for case in range(1, cases + 1):
        case_rng = np.random.default_rng([seed, case])
        signals, hr, truth = simulate_case(case_rng, minutes * 60)
        bis = bool(case_rng.random() < 0.8)
        write_vital(tmp / f"{case:04d}.vital", signals, hr, T0 + case * 86400, bis)
        clinical.append({"caseid": case, "subjectid": int(subjects[case - 1]), "age": int(case_rng.integers(20, 85)),
                         "sex": str(case_rng.choice(["M", "F"])), "casedur": minutes})
        truth_rows.append({"caseid": case, "bis": bis, **truth})
    pd.DataFrame(clinical).to_csv(tmp / "clinical_data.csv", index=False)
    pd.DataFrame(truth_rows).to_csv(tmp / "ground_truth.csv", index=False, float_format="%.4f")
    if existing:
        shutil.rmtree(out)
    if out.exists():  # a folder without cases: move the new files in, leave what is there
        for path in sorted(tmp.iterdir()):
            os.replace(path, out / path.name)
        tmp.rmdir()
    else:
        tmp.rename(out)
    return out
