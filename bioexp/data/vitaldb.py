"""VitalDB biosignal windows: case reading, patient-level splits, window building, and the datamodule.

Cases are VitalDB ``.vital`` files (tracks ``SNUADC/ECG_II``, ``SNUADC/PLETH`` at 500 Hz, read with the
``vitaldb`` package) or WFDB records with ECG and PLETH channels. ``prepare-splits`` assigns case ids to
train/val/test by patient (``clinical_data.csv``'s ``subjectid`` when present) and writes
``splits_<mode>.json``; ``build-windows`` filters each channel (ECG Butterworth 0.5-40 Hz, PPG Chebyshev-II
0.5-8 Hz, order 4, zero phase), resamples to 125 Hz, cuts 10 s windows, drops windows that fail the
signal-quality gates (NaN, flat line, clipping, implausible amplitude, judged on the raw samples),
z-scores each window per channel and writes ``<split>_windows.npz`` (``data [N, C, L]``, ``case_ids``,
``starts``, ``hr``). The datamodule runs both when their outputs are missing or stale.

CLI: ``python -m bioexp.data.vitaldb prepare-splits ...`` / ``build-windows ...`` (``--help``).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from bioexp.data.base import SplitDataModule
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the window file layout or processing changes: old files are rebuilt
SPLITS = ("train", "val", "test")
MODES = ("full", "fasttrack")
CASE_SETS = {"all": None, "bis": "BIS/BIS"}  # case set -> track a case must have
HR_TRACK = "Solar8000/HR"
CHANNELS: dict[str, dict[str, Any]] = {
    # channel -> .vital track, accepted WFDB signal names, and its zero-phase band-pass filter
    "ECG": {"track": "SNUADC/ECG_II", "wfdb": ["II", "ECG", "ECG II", "MLII"],
            "filter": {"type": "butter", "band": [0.5, 40.0], "order": 4}},
    "PPG": {"track": "SNUADC/PLETH", "wfdb": ["PLETH", "PPG"],
            "filter": {"type": "cheby2", "band": [0.5, 8.0], "order": 4, "stopband_db": 40.0}},
    "ART": {"track": "SNUADC/ART", "wfdb": ["ART", "ABP"],
            "filter": {"type": "cheby2", "band": [0.5, 8.0], "order": 4, "stopband_db": 40.0}},
}
WINDOWS: dict[str, Any] = {
    "fs": 125,                 # Hz after resampling
    "seconds": 10.0,           # window length (10 s x 125 Hz = 1250 samples)
    "stride_seconds": 10.0,    # non-overlapping
    "max_nan_fraction": 0.01,  # NaN samples allowed per channel window (interpolated)
    "flat_seconds": 1.0,       # a run of identical samples this long is a flat line
    "clip_fraction": 0.02,     # samples sitting exactly at the window's min or max
    "amplitude": {"ECG": [0.1, 10.0], "PPG": [0.05, 150.0], "ART": [5.0, 200.0]},  # raw peak-to-peak bounds
    "min_std": 1.0e-6,         # of the filtered window, before z-scoring
}
HINT = ("write synthetic cases with `python -m bioexp.data.synth vitaldb --out {root}` or download VitalDB "
        "cases (https://vitaldb.net/dataset) as .vital files into {root}")


class CaseError(Exception):
    """A case that cannot give windows (missing track, too short, corrupt): skipped and counted."""


@dataclass
class Windows:
    """Windows of one split and where they came from."""

    data: np.ndarray                    # [N, C, L] float32, z-scored per window and channel
    case_ids: np.ndarray                # [N] str
    starts: np.ndarray                  # [N] seconds from the case start
    hr: np.ndarray                      # [N] float32 mean monitor heart rate (NaN where absent)
    channels: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def subset(self, rows: np.ndarray) -> Windows:
        return Windows(self.data[rows], self.case_ids[rows], self.starts[rows], self.hr[rows], self.channels,
                       self.summary)

    def save(self, path: Path, fingerprint: str) -> None:
        tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
        with open(tmp, "wb") as f:
            np.savez(f, data=self.data, case_ids=self.case_ids, starts=self.starts, hr=self.hr,
                     channels=np.array(self.channels), fingerprint=np.array(fingerprint),
                     summary=np.array(json.dumps(self.summary)))
        os.replace(tmp, path)  # never a half-written file under the real name

    @classmethod
    def load(cls, path: Path) -> Windows:
        with np.load(path) as z:
            missing = {"data", "case_ids"} - set(z.files)
            if missing:
                raise BioexpError(f"{path} lacks {sorted(missing)}; rebuild it with "
                                  "`python -m bioexp.data.vitaldb build-windows`")
            n = len(z["data"])
            channels = [str(c) for c in z["channels"]] if "channels" in z.files else []
            return cls(z["data"].astype(np.float32), z["case_ids"].astype(str),
                       z["starts"] if "starts" in z.files else np.zeros(n),
                       z["hr"].astype(np.float32) if "hr" in z.files else np.full(n, np.nan, np.float32),
                       channels, json.loads(str(z["summary"])) if "summary" in z.files else {})


def stored_fingerprint(path: Path) -> str | None:
    try:
        with np.load(path) as z:
            return str(z["fingerprint"]) if "fingerprint" in z.files else None
    except (OSError, ValueError):
        return None


# -- options -------------------------------------------------------------------------------------
def merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """Deep-merge ``override`` into a copy of ``base`` (YAML option files, config keys)."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def check_channels(channels: Sequence[str], channel_specs: dict[str, Any]) -> None:
    unknown = [c for c in channels if c not in channel_specs]
    if unknown or not channels:
        raise BioexpError(f"unknown channels {unknown or list(channels)}; choose from {sorted(channel_specs)} "
                          "(or describe new ones in data.channel_specs / --channels-yaml)")


# -- reading cases -------------------------------------------------------------------------------
def case_files(root: Path) -> dict[str, Path]:
    """Case id -> file: ``.vital`` files and WFDB records (``.hea``) directly in ``root``."""
    files = {p.stem: p for p in sorted(root.glob("*.hea"))}
    files.update({p.stem: p for p in sorted(root.glob("*.vital"))})
    return dict(sorted(files.items()))


def read_case(path: Path, channels: Sequence[str], channel_specs: dict[str, Any],
              with_hr: bool = True) -> tuple[np.ndarray, float, np.ndarray | None]:
    """Raw ``[C, T]`` float64 signals (NaN where missing), their rate, and the 1 Hz monitor HR if any."""
    try:
        if path.suffix == ".vital":
            signals, fs, hr = _read_vital(path, channels, channel_specs, with_hr)
        else:
            signals, fs, hr = _read_wfdb(path.with_suffix(""), channels, channel_specs)
    except CaseError:
        raise
    except Exception as exc:  # corrupt or truncated files raise all sorts of things: one reason per case
        raise CaseError(f"unreadable ({type(exc).__name__}: {exc})") from exc
    empty = [c for c, x in zip(channels, signals, strict=True) if not np.isfinite(x).any()]
    if empty:  # the vitaldb reader returns all-NaN tracks for a truncated file
        raise CaseError(f"no samples in {empty} (empty or truncated file)")
    return signals, fs, hr


def _read_vital(path: Path, channels: Sequence[str], channel_specs: dict[str, Any],
                with_hr: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
    import vitaldb

    tracks = [channel_specs[c]["track"] for c in channels]
    vf = vitaldb.VitalFile(str(path), [*tracks, HR_TRACK] if with_hr else tracks)
    missing = [t for t in tracks if t not in vf.trks]
    if missing:
        raise CaseError(f"missing tracks {missing}")
    rates = {float(vf.trks[t].srate) for t in tracks}
    if len(rates) != 1 or 0 in rates:
        raise CaseError(f"tracks {tracks} must be waveforms of one sampling rate, got {sorted(rates)} Hz")
    fs = rates.pop()
    # At the native rate to_numpy returns every sample (it only picks samples when asked for a lower rate).
    signals = vf.to_numpy(tracks, 1.0 / fs).T.astype(np.float64)
    hr = None
    if with_hr and HR_TRACK in vf.trks:
        hr = vf.to_numpy([HR_TRACK], 1.0)[:, 0].astype(np.float64)
    return signals, fs, hr


def _read_wfdb(record: Path, channels: Sequence[str], channel_specs: dict[str, Any]) -> tuple[np.ndarray, float, None]:
    import wfdb

    header = wfdb.rdheader(str(record))
    names = [n.upper() for n in header.sig_name]
    index = []
    for channel in channels:
        found = [names.index(a.upper()) for a in channel_specs[channel]["wfdb"] if a.upper() in names]
        if not found:
            raise CaseError(f"no {channel} channel (looked for {channel_specs[channel]['wfdb']}, "
                            f"record has {header.sig_name})")
        index.append(found[0])
    rec = wfdb.rdrecord(str(record), channels=index)
    if rec.p_signal is None or rec.p_signal.shape[0] < header.sig_len:
        raise CaseError("truncated signal file")
    return rec.p_signal.T.astype(np.float64), float(header.fs), None


# -- processing ----------------------------------------------------------------------------------
def bandpass(x: np.ndarray, fs: float, spec: dict[str, Any]) -> np.ndarray:
    """Zero-phase band-pass of one channel (NaNs interpolated first; their windows are gated out anyway)."""
    from scipy import signal

    x = _fill_nan(x)
    low, high = spec["band"]
    high = min(high, 0.45 * fs)  # a record sampled too slowly for the upper edge keeps what it has
    if spec["type"] == "butter":
        sos = signal.butter(spec["order"], [low, high], btype="bandpass", fs=fs, output="sos")
    elif spec["type"] == "cheby2":
        sos = signal.cheby2(spec["order"], spec["stopband_db"], [low, high], btype="bandpass", fs=fs, output="sos")
    else:
        raise BioexpError(f"unknown filter type {spec['type']!r}; use butter or cheby2")
    return signal.sosfiltfilt(sos, x)


def _fill_nan(x: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(x)
    if not bad.any():
        return x
    if bad.all():
        return np.zeros_like(x)
    t = np.arange(len(x))
    return np.where(bad, np.interp(t, t[~bad], x[~bad]), x)


def resample(x: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Polyphase resampling with its anti-alias filter (``to_numpy`` at a lower rate would only pick samples)."""
    from scipy.signal import resample_poly

    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    return x if ratio == 1 else resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def _longest_run(flags: np.ndarray) -> int:
    if not flags.any():
        return 0
    edges = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max())


def quality_gate(raw: np.ndarray, fs: float, channels: Sequence[str], options: dict[str, Any]) -> str | None:
    """Why a raw ``[C, T]`` window is unusable (``nan``, ``flat``, ``clipping``, ``amplitude``), or None."""
    for x, channel in zip(raw, channels, strict=True):
        finite = np.isfinite(x)
        if (~finite).mean() > options["max_nan_fraction"] or not finite.any():
            return "nan"
        x = x[finite]
        scale = max(float(np.abs(x).max()), 1e-12)
        if _longest_run(np.abs(np.diff(x)) <= 1e-7 * scale) + 1 >= options["flat_seconds"] * fs:
            return "flat"
        lo, hi = float(x.min()), float(x.max())
        tol = 1e-6 * max(hi - lo, 1e-12)
        if ((x <= lo + tol) | (x >= hi - tol)).mean() > options["clip_fraction"]:
            return "clipping"
        bounds = options["amplitude"].get(channel)
        if bounds is not None and not bounds[0] <= hi - lo <= bounds[1]:
            return "amplitude"
    return None


def case_windows(raw: np.ndarray, fs: float, hr: np.ndarray | None, channels: Sequence[str],
                 channel_specs: dict[str, Any], options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                                   Counter]:
    """Windows ``[n, C, L]``, their start times (s), mean HR, and how many windows each gate rejected."""
    seconds, stride, target_fs = options["seconds"], options["stride_seconds"], options["fs"]
    raw_len, length = round(seconds * fs), round(seconds * target_fs)
    n = int((raw.shape[1] / fs - seconds) // stride) + 1 if raw.shape[1] >= raw_len else 0
    if n <= 0:
        raise CaseError(f"shorter than one {seconds:g} s window ({raw.shape[1] / fs:.1f} s)")
    filtered = np.stack([resample(bandpass(x, fs, channel_specs[c]["filter"]), fs, target_fs)
                         for x, c in zip(raw, channels, strict=True)])
    rejected: Counter = Counter()
    windows, starts, rates = [], [], []
    for i in range(n):
        start = i * stride
        a = round(start * fs)
        reason = quality_gate(raw[:, a:a + raw_len], fs, channels, options)
        b = round(start * target_fs)
        w = filtered[:, b:b + length]
        if reason is None and w.shape[1] < length:
            reason = "short"
        std = w.std(axis=1, keepdims=True) if reason is None else None
        if std is not None and (std < options["min_std"]).any():
            reason = "flat"
        if reason is not None:
            rejected[reason] += 1
            continue
        windows.append(((w - w.mean(axis=1, keepdims=True)) / std).astype(np.float32))
        starts.append(start)
        if hr is not None:
            seg = hr[int(start):int(start + seconds)]
            seg = seg[np.isfinite(seg)]
            rates.append(float(seg.mean()) if len(seg) else np.nan)
        else:
            rates.append(np.nan)
    data = np.stack(windows) if windows else np.zeros((0, len(channels), length), np.float32)
    return data, np.asarray(starts, float), np.asarray(rates, np.float32), rejected


def build_windows(root: Path, case_ids: Sequence[str], channels: Sequence[str],
                  channel_specs: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> Windows:
    """Windows of ``case_ids`` under ``root``; bad cases are skipped and listed in ``summary``."""
    channel_specs, options = merge(CHANNELS, channel_specs), merge(WINDOWS, options)
    check_channels(channels, channel_specs)
    files = case_files(root)
    parts, skipped, rejected = [], {}, Counter()
    for case_id in case_ids:
        try:
            if case_id not in files:
                raise CaseError("no such file")
            raw, fs, hr = read_case(files[case_id], channels, channel_specs)
            data, starts, rates, rej = case_windows(raw, fs, hr, channels, channel_specs, options)
        except CaseError as exc:
            skipped[case_id] = str(exc)
            continue
        rejected.update(rej)
        if len(data):
            parts.append((case_id, data, starts, rates))
    length = round(options["seconds"] * options["fs"])
    data = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, len(channels), length), np.float32)
    summary = {"cases": len(case_ids), "cases_used": len(parts), "skipped": skipped, "windows": len(data),
               "rejected": dict(rejected)}
    return Windows(data, np.array([p[0] for p in parts for _ in range(len(p[1]))], dtype=str),
                   np.concatenate([p[2] for p in parts]) if parts else np.zeros(0),
                   np.concatenate([p[3] for p in parts]) if parts else np.zeros(0, np.float32),
                   list(channels), summary)


def describe(summary: dict[str, Any]) -> str:
    """One line: what was used, what was skipped (and why, first few), what the gates rejected."""
    skipped = summary.get("skipped", {})
    reasons = "; ".join(f"{k}: {v}" for k, v in list(skipped.items())[:3]) + (" ..." if len(skipped) > 3 else "")
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(summary.get("rejected", {}).items())) or "none"
    return (f"{summary.get('windows', 0)} windows from {summary.get('cases_used', 0)} of {summary.get('cases', 0)} "
            f"cases; skipped {len(skipped)} case(s){' (' + reasons + ')' if skipped else ''}; "
            f"windows rejected by quality gates: {rejected}")


# -- splits --------------------------------------------------------------------------------------
def _has_track(path: Path, track: str) -> bool:
    import vitaldb

    try:
        return path.suffix == ".vital" and track in vitaldb.VitalFile(str(path), header_only=True).get_track_names()
    except Exception:  # unreadable files are reported when windows are built
        return False


def prepare_splits(root: Path, mode: str = "fasttrack", case_set: str = "all", seed: int = 0,
                   fractions: Sequence[float] = (0.7, 0.15, 0.15), fasttrack_cases: int = 70) -> dict[str, Any]:
    """Patient-level train/val/test case ids; ``fasttrack`` keeps ``fasttrack_cases`` cases (whole patients)."""
    if mode not in MODES:
        raise BioexpError(f"unknown split mode {mode!r}; choose one of {', '.join(MODES)}")
    if case_set not in CASE_SETS:
        raise BioexpError(f"unknown case set {case_set!r}; choose one of {', '.join(CASE_SETS)}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise BioexpError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    files = case_files(root)
    if CASE_SETS[case_set]:
        files = {k: v for k, v in files.items() if _has_track(v, CASE_SETS[case_set])}
    if not files:
        raise DataNotFoundError(f"no VitalDB cases (.vital or WFDB .hea) in {root}"
                                f"{' with a ' + str(CASE_SETS[case_set]) + ' track' if CASE_SETS[case_set] else ''}; "
                                + HINT.format(root=root))
    patient = {case: case for case in files}
    clinical = root / "clinical_data.csv"
    if clinical.is_file():
        import pandas as pd

        table = pd.read_csv(clinical, dtype=str)
        if {"caseid", "subjectid"} <= set(table.columns):
            known = dict(zip(table["caseid"].str.lstrip("0"), table["subjectid"], strict=True))
            patient = {case: known.get(case.lstrip("0"), case) for case in files}
    rng = np.random.default_rng(seed)
    patients = sorted(set(patient.values()))
    patients = [patients[i] for i in rng.permutation(len(patients))]
    by_patient = {p: sorted(c for c in files if patient[c] == p) for p in patients}
    if mode == "fasttrack":
        kept, count = [], 0
        for p in patients:
            if count >= fasttrack_cases:
                break
            kept.append(p)
            count += len(by_patient[p])
        patients = kept
    total = sum(len(by_patient[p]) for p in patients)
    bounds = np.cumsum(fractions)[:2] * total
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    count = 0
    for p in patients:
        split = SPLITS[int(np.searchsorted(bounds, count, side="right"))]
        splits[split].extend(by_patient[p])
        count += len(by_patient[p])
    return {"mode": mode, "case_set": case_set, "seed": seed, "source": str(root),
            **{s: sorted(v) for s, v in splits.items()}}


def write_splits(splits: dict[str, Any], output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"splits_{splits['mode']}.json"
    path.write_text(json.dumps(splits, indent=2) + "\n")
    return path


def read_splits(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataNotFoundError(f"split file {path} not found; write it with "
                                "`python -m bioexp.data.vitaldb prepare-splits --cases-dir ... --output ...`")
    return json.loads(path.read_text())


def windows_fingerprint(root: Path, case_ids: Sequence[str], channels: Sequence[str],
                        channel_specs: dict[str, Any], options: dict[str, Any]) -> str:
    """Everything the windows depend on: cases (size, mtime), channels, filters and gates."""
    files = case_files(root)
    stats = []
    for case in case_ids:
        p = files.get(case)
        st = p.stat() if p is not None else None
        stats.append([case, st.st_size if st else None, st.st_mtime_ns if st else None])
    payload = [FORMAT, stats, list(channels), {c: channel_specs[c] for c in channels}, options]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# -- datamodule ----------------------------------------------------------------------------------
class VitalDBDataModule(SplitDataModule):
    """Windows of VitalDB cases for masked signal modeling and downstream fine-tuning.

    ``root`` holds the cases (``.vital`` / WFDB); ``windows_dir`` the splits and window files (built here
    when missing or stale). With ``root: null`` the window files in ``windows_dir`` are used as they are.
    Without a val window file 10% (``val_fraction``) of the training windows are held out; without a test
    file the test stage uses the validation windows. ``target: hr`` keeps windows with a monitor heart rate
    and batches ``(x, hr)``; ``max_train_windows`` draws a small labelled training set (seeded).
    """

    def __init__(self, root: str | None, windows_dir: str, channels: Sequence[str] = ("PPG", "ECG"),
                 split_mode: str = "fasttrack", case_set: str = "all", split_seed: int = 0,
                 split_fractions: Sequence[float] = (0.7, 0.15, 0.15), fasttrack_cases: int = 70,
                 channel_specs: dict[str, Any] | None = None, windows: dict[str, Any] | None = None,
                 train_file: str = "train_windows.npz", val_file: str = "val_windows.npz",
                 test_file: str = "test_windows.npz", val_fraction: float = 0.1, target: str | None = None,
                 max_train_windows: int | None = None, batch_size: int = 128, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0, synthesize: dict[str, Any] | None = None) -> None:
        super().__init__()
        if target not in (None, "hr"):
            raise BioexpError(f"unknown data.target {target!r}; use hr (monitor heart rate) or null")
        self.save_hyperparameters()
        self.channel_specs = merge(CHANNELS, channel_specs)
        self.options = merge(WINDOWS, windows)
        check_channels(list(channels), self.channel_specs)
        self.root = Path(root) if root else None
        self.windows_dir = Path(windows_dir)
        self.datasets: dict[str, Any] = {}
        self._windows: dict[str, Windows] | None = None

    @property
    def length(self) -> int:
        return round(self.options["seconds"] * self.options["fs"])

    @property
    def dims(self) -> dict[str, Any]:
        """Filled into ``???`` keys of the model config."""
        dims = {"in_channels": len(self.hparams.channels), "input_length": self.length,
                "channels": list(self.hparams.channels)}
        if self.hparams.target:
            hr = self.windows()["train"].hr
            dims.update(target_mean=float(hr.mean()), target_std=float(hr.std() + 1e-6))
        return dims

    # -- building ----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.windows()

    def _ensure_cases(self) -> None:
        if self.root is None or (self.root.is_dir() and case_files(self.root)):
            return
        if not self.hparams.synthesize:
            raise DataNotFoundError(f"no VitalDB cases in {self.root}; " + HINT.format(root=self.root))
        from bioexp.data.synth.vitaldb import generate_vitaldb

        log.info("No VitalDB cases at %s: writing synthetic ones (%s)", self.root, self.hparams.synthesize)
        generate_vitaldb(self.root, **self.hparams.synthesize)

    def _build_missing(self) -> None:
        """(Re)write the splits and every split's window file whose inputs or options changed."""
        hp = self.hparams
        splits = prepare_splits(self.root, hp.split_mode, hp.case_set, hp.split_seed, hp.split_fractions,
                                hp.fasttrack_cases)
        write_splits(splits, self.windows_dir)
        for split, name in zip(SPLITS, (hp.train_file, hp.val_file, hp.test_file), strict=True):
            path = self.windows_dir / name
            if not splits[split]:
                path.unlink(missing_ok=True)  # an old file would no longer match the splits
                continue
            fingerprint = windows_fingerprint(self.root, splits[split], hp.channels, self.channel_specs, self.options)
            if stored_fingerprint(path) == fingerprint:
                continue
            log.info("Building %s windows of %d cases -> %s", split, len(splits[split]), path)
            windows = build_windows(self.root, splits[split], hp.channels, self.channel_specs, self.options)
            log.info("VitalDB %s: %s", split, describe(windows.summary))
            if not len(windows.data):
                raise BioexpError(f"no usable {split} windows from {self.root}: {describe(windows.summary)}; "
                                  "check the tracks/channels (data.channels) and the quality gates (data.windows)")
            windows.save(path, fingerprint)

    def windows(self) -> dict[str, Windows]:
        """Train/val/test windows, built or rebuilt first when needed."""
        if self._windows is not None:
            return self._windows
        hp = self.hparams
        if self.root is not None:
            self._ensure_cases()
            self._build_missing()
        train_path = self.windows_dir / hp.train_file
        if not train_path.is_file():
            raise DataNotFoundError(f"{train_path} not found; build it with `python -m bioexp.data.vitaldb "
                                    "build-windows ...` or set data.root to a folder of VitalDB cases")
        out = {"train": Windows.load(train_path)}
        self._check_channels(out["train"], train_path)
        val_path, test_path = self.windows_dir / hp.val_file, self.windows_dir / hp.test_file
        if val_path.is_file():
            out["val"] = Windows.load(val_path)
        else:  # hold out a seeded fraction of the training windows
            order = np.random.default_rng(hp.seed).permutation(len(out["train"].data))
            n_val = max(1, round(hp.val_fraction * len(order)))
            if len(order) < 2:
                raise BioexpError(f"{train_path} has {len(order)} window(s): too few to hold out validation ones")
            log.info("No %s: holding out %d of %d training windows for validation", val_path, n_val, len(order))
            out["val"], out["train"] = out["train"].subset(order[:n_val]), out["train"].subset(order[n_val:])
        out["test"] = Windows.load(test_path) if test_path.is_file() else out["val"]
        if hp.target:
            out = {k: v.subset(np.flatnonzero(np.isfinite(v.hr))) for k, v in out.items()}
            if min(len(v.data) for v in out.values()) == 0:
                raise BioexpError(f"data.target=hr but some split has no window with a heart-rate label (track "
                                  f"{HR_TRACK}); use cases that have it, or data.target=null for pretraining")
        if hp.max_train_windows and len(out["train"].data) > hp.max_train_windows:
            rows = np.random.default_rng(hp.seed).choice(len(out["train"].data), hp.max_train_windows, replace=False)
            out["train"] = out["train"].subset(np.sort(rows))
        self._windows = out
        return out

    def _check_channels(self, windows: Windows, path: Path) -> None:
        want = list(self.hparams.channels)
        if windows.channels and windows.channels != want:
            raise BioexpError(f"{path} holds channels {windows.channels}, data.channels is {want}; "
                              "rebuild the windows or change data.channels")
        if windows.data.ndim != 3 or windows.data.shape[1:] != (len(want), self.length):
            raise BioexpError(f"{path}: data has shape {windows.data.shape}, expected [N, {len(want)}, {self.length}]")

    # -- loaders -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.datasets = {k: WindowDataset(v) for k, v in self.windows().items()}



class WindowDataset:
    """``(x [C, L], hr)`` pairs; accepts plain indices and :class:`EpochSampler`'s ``(index, seed)``."""

    def __init__(self, windows: Windows) -> None:
        self.data, self.hr = windows.data, windows.hr

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = item[0] if isinstance(item, tuple) else item
        return torch.from_numpy(self.data[index]), torch.tensor(self.hr[index])


# -- command line --------------------------------------------------------------------------------
def _yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise BioexpError(f"{path} not found")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}


def _cmd_prepare(args: argparse.Namespace) -> str:
    splits = prepare_splits(Path(args.cases_dir), args.mode, args.case_set, args.seed, args.fractions,
                            args.fasttrack_cases)
    path = write_splits(splits, Path(args.output))
    return f"wrote {path}: " + ", ".join(f"{s} {len(splits[s])} cases" for s in SPLITS)


def _cmd_build(args: argparse.Namespace) -> str:
    splits = read_splits(Path(args.split_file))
    if args.split not in SPLITS:
        raise BioexpError(f"unknown split {args.split!r}; choose one of {', '.join(SPLITS)}")
    root = Path(args.cases_dir or splits["source"])
    channel_specs = merge(CHANNELS, _yaml(args.channels_yaml))
    options = merge(WINDOWS, _yaml(args.windows_yaml))
    windows = build_windows(root, splits[args.split], args.channels, channel_specs, options)
    if not len(windows.data):
        raise BioexpError(f"no usable windows: {describe(windows.summary)}")
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{args.split}_windows.npz"
    windows.save(path, windows_fingerprint(root, splits[args.split], args.channels, channel_specs, options))
    return f"wrote {path} ({tuple(windows.data.shape)}): {describe(windows.summary)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bioexp.data.vitaldb",
                                     description="VitalDB case splits and 10 s biosignal windows.")
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare-splits", help="patient-level train/val/test case ids -> splits_<mode>.json")
    prep.add_argument("--cases-dir", required=True, help="folder of .vital files / WFDB records")
    prep.add_argument("--mode", choices=MODES, default="fasttrack", help="fasttrack: a small subset (default)")
    prep.add_argument("--case-set", choices=sorted(CASE_SETS), default="all", help="bis: cases with a BIS track")
    prep.add_argument("--output", default="data", help="folder for splits_<mode>.json (default data)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    prep.add_argument("--fasttrack-cases", type=int, default=70, help="cases kept in fasttrack mode (default 70)")
    prep.set_defaults(handler=_cmd_prepare)
    build = commands.add_parser("build-windows", help="filtered, gated, z-scored windows -> <split>_windows.npz")
    build.add_argument("--split-file", required=True)
    build.add_argument("--split", default="train", choices=SPLITS)
    build.add_argument("--outdir", required=True)
    build.add_argument("--cases-dir", default=None, help="default: the split file's source folder")
    build.add_argument("--channels", nargs="+", default=["PPG", "ECG"])
    build.add_argument("--channels-yaml", default=None, help="per-channel track names and filters (overrides)")
    build.add_argument("--windows-yaml", default=None, help="window length, rate and quality gates (overrides)")
    build.set_defaults(handler=_cmd_build)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors are one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(args.handler(args))
    except BioexpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
