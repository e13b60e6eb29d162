"""VitalDB windows: per-channel filtering and resampling, quality gates, and window files built at scale.

Each channel is band-pass filtered at its own rate (ECG Butterworth 0.5-40 Hz, PPG Chebyshev-II 0.5-8 Hz,
order 4, zero phase) and resampled on its own to the target rate (``scipy.signal.resample_poly``, which
filters against aliasing), then cut into 10 s windows; windows failing the quality gates (NaN, flat line,
clipping, implausible amplitude, judged on each channel's raw samples at its own rate) are dropped, the
rest z-scored per window and channel.

At scale, worker processes each build one case at a time and write it as a shard (``<case>.npy`` +
``<case>.json``) into a shard folder; shards whose case file and settings are unchanged are kept, so
an interrupted build resumes, and machines of a cluster can each build a case-id range (``shard i/n``)
into the same or copied folders. :func:`merge_shards` then streams the shards into one ``.npy`` that
the datamodule memory-maps. Peak memory is one case per process, whatever the number of cases.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bioexp.data.vitaldb_io import CaseError, Recording, case_files, read_case
from bioexp.errors import BioexpError

log = logging.getLogger(__name__)

FORMAT = 2  # bump when the window layout or processing changes: old windows are rebuilt
CHANNELS: dict[str, dict[str, Any]] = {
    # channel -> .vital track, other names of the signal (WFDB signal names; track names on any device),
    # and its zero-phase band-pass filter
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


def settings_fingerprint(channels: Sequence[str], channel_specs: dict[str, Any], options: dict[str, Any]) -> str:
    """What every window depends on besides its case file: format, channels, their filters, the gates."""
    payload = [FORMAT, list(channels), {c: channel_specs[c] for c in channels}, options]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


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


def channel_gate(x: np.ndarray, fs: float, channel: str, options: dict[str, Any]) -> str | None:
    """Why one raw channel window (at its own rate) is unusable: ``nan``, ``flat``, ``clipping``, ``amplitude``."""
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


def quality_gate(raw: Sequence[np.ndarray], fs: float | Sequence[float], channels: Sequence[str],
                 options: dict[str, Any]) -> str | None:
    """The first reason a raw window (one array per channel, each at its rate ``fs``) is unusable, or None."""
    rates = [fs] * len(channels) if np.isscalar(fs) else list(fs)
    for x, rate, channel in zip(raw, rates, channels, strict=True):
        reason = channel_gate(x, rate, channel, options)
        if reason is not None:
            return reason
    return None


def case_windows(rec: Recording, channels: Sequence[str], channel_specs: dict[str, Any],
                 options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, Counter]:
    """Windows ``[n, C, L]`` of one case, their start times (s), mean HR, and how many each gate rejected."""
    seconds, stride, target_fs = options["seconds"], options["stride_seconds"], options["fs"]
    length = round(seconds * target_fs)
    n = int((rec.seconds - seconds) // stride) + 1 if rec.seconds >= seconds else 0
    if n <= 0:
        raise CaseError(f"shorter than one {seconds:g} s window ({rec.seconds:.1f} s)")
    filtered = [resample(bandpass(x, fs, channel_specs[c]["filter"]), fs, target_fs)
                for x, fs, c in zip(rec.signals, rec.rates, channels, strict=True)]
    rejected: Counter = Counter()
    windows, starts, rates = [], [], []
    for i in range(n):
        start = i * stride
        raw = [x[round(start * fs):round(start * fs) + round(seconds * fs)]
               for x, fs in zip(rec.signals, rec.rates, strict=True)]
        reason = quality_gate(raw, rec.rates, channels, options)
        b = round(start * target_fs)
        w = [f[b:b + length] for f in filtered]
        if reason is None and min(len(x) for x in w) < length:
            reason = "short"
        if reason is None:
            w = np.stack(w)
            std = w.std(axis=1, keepdims=True)
            if (std < options["min_std"]).any():
                reason = "flat"
        if reason is not None:
            rejected[reason] += 1
            continue
        windows.append(((w - w.mean(axis=1, keepdims=True)) / std).astype(np.float32))
        starts.append(start)
        seg = rec.hr[int(start):int(start + seconds)] if rec.hr is not None else np.zeros(0)
        seg = seg[np.isfinite(seg)]
        rates.append(float(seg.mean()) if len(seg) else np.nan)
    data = np.stack(windows) if windows else np.zeros((0, len(channels), length), np.float32)
    return data, np.asarray(starts, float), np.asarray(rates, np.float32), rejected


# -- window sets ---------------------------------------------------------------------------------
@dataclass
class Windows:
    """Windows of one split: ``data`` (an array or a read-only memmap) and per-window metadata.

    ``rows`` selects windows of ``data`` without copying it (a memmap stays on disk); ``case_ids`` is None
    for window files that do not record their cases (the guide's ``data``/``labels`` files).
    """

    data: np.ndarray                    # [N, C, L] float32, z-scored per window and channel
    case_ids: np.ndarray | None         # [n] str
    starts: np.ndarray                  # [n] seconds from the case start
    hr: np.ndarray                      # [n] float32 mean monitor heart rate (NaN where absent)
    channels: list[str]
    summary: dict[str, Any] = field(default_factory=dict)
    rows: np.ndarray | None = None      # [n] rows of data; None: all

    def __len__(self) -> int:
        return len(self.hr)

    def index(self) -> np.ndarray:
        return np.arange(len(self.data)) if self.rows is None else self.rows

    def subset(self, rows: np.ndarray) -> Windows:
        rows = np.asarray(rows, dtype=np.int64)
        return Windows(self.data, None if self.case_ids is None else self.case_ids[rows], self.starts[rows],
                       self.hr[rows], self.channels, self.summary, self.index()[rows])

    def array(self) -> np.ndarray:
        """The selected windows in memory (small sets, tests)."""
        return np.asarray(self.data[self.index()])

    def save(self, stem: Path, fingerprint: str) -> None:
        """``<stem>.npy`` (the windows) and ``<stem>.meta.npz`` (the rest), each written atomically."""
        tmp = stem.with_name(f"{stem.name}.tmp{os.getpid()}.npy")
        np.save(tmp, self.array())
        os.replace(tmp, stem.with_suffix(".npy"))
        _save_meta(stem, self.case_ids, self.starts, self.hr, self.channels, fingerprint, self.summary)

    @classmethod
    def load(cls, path: Path) -> Windows:
        """A window file: ours (``.npy`` + ``.meta.npz``, memory-mapped) or an ``.npz`` with ``data`` and
        ``case_ids`` (ours before) or ``labels`` (the guide's: read into memory)."""
        if path.suffix == ".npy" or not path.is_file() and path.with_suffix(".npy").is_file():
            data = np.load(path.with_suffix(".npy"), mmap_mode="r")
            with np.load(path.with_suffix(".meta.npz")) as z:
                return cls(data, z["case_ids"].astype(str), z["starts"], z["hr"].astype(np.float32),
                           [str(c) for c in z["channels"]], json.loads(str(z["summary"])))
        with np.load(path) as z:
            if "data" not in z.files:
                raise BioexpError(f"{path} has no 'data' array (has {z.files}); rebuild it with "
                                  "`python -m bioexp.data.vitaldb build-windows`")
            n = len(z["data"])
            target = z["hr"] if "hr" in z.files else z["labels"] if "labels" in z.files else np.full(n, np.nan)
            return cls(z["data"].astype(np.float32), z["case_ids"].astype(str) if "case_ids" in z.files else None,
                       z["starts"] if "starts" in z.files else np.zeros(n), np.asarray(target, np.float32).reshape(n),
                       [str(c) for c in z["channels"]] if "channels" in z.files else [],
                       json.loads(str(z["summary"])) if "summary" in z.files else {})


def _save_meta(stem: Path, case_ids: np.ndarray | None, starts: np.ndarray, hr: np.ndarray, channels: Sequence[str],
               fingerprint: str, summary: dict[str, Any]) -> None:
    tmp = stem.with_name(f"{stem.name}.tmp{os.getpid()}.meta.npz")
    with open(tmp, "wb") as f:
        np.savez(f, case_ids=np.asarray(case_ids if case_ids is not None else [], dtype=str), starts=starts, hr=hr,
                 channels=np.array(list(channels)), fingerprint=np.array(fingerprint),
                 summary=np.array(json.dumps(summary)))
    os.replace(tmp, stem.with_suffix(".meta.npz"))


def stored_fingerprint(stem: Path) -> str | None:
    """The fingerprint of our window file ``<stem>.npy``, None if absent or not ours."""
    meta = stem.with_suffix(".meta.npz")
    if not (meta.is_file() and stem.with_suffix(".npy").is_file()):
        return None
    try:
        with np.load(meta) as z:
            return str(z["fingerprint"]) if "fingerprint" in z.files else None
    except (OSError, ValueError):
        return None


# -- building at scale ---------------------------------------------------------------------------
def _case_fingerprint(path: Path | None, settings: str) -> str | None:
    if path is None or not path.exists():
        return None
    st = path.stat()
    return f"{settings}:{path.name}:{st.st_size}:{st.st_mtime_ns}"


def _shard_meta(shard_dir: Path, case: str) -> dict[str, Any] | None:
    try:
        return json.loads((shard_dir / f"{case}.json").read_text())
    except (OSError, ValueError):
        return None


def build_case(job: tuple[str, str | None, list[str], dict[str, Any], dict[str, Any], str, str | None]) -> None:
    """Worker: the windows of one case -> ``<shard_dir>/<case>.npy`` + ``<case>.json`` (reason if skipped)."""
    case, path, channels, channel_specs, options, shard_dir, fingerprint = job
    out = Path(shard_dir)
    meta: dict[str, Any] = {"case": case, "fingerprint": fingerprint, "windows": 0, "rejected": {}}
    try:
        if path is None:
            raise CaseError("no such file")
        rec = read_case(Path(path), channels, channel_specs)
        data, starts, hr, rejected = case_windows(rec, channels, channel_specs, options)
    except CaseError as exc:
        meta["skipped"] = str(exc)
    else:
        tmp = out / f"{case}.tmp{os.getpid()}.npy"
        np.save(tmp, data)
        os.replace(tmp, out / f"{case}.npy")
        meta.update(windows=len(data), rejected=dict(rejected), starts=starts.tolist(),
                    hr=[None if not np.isfinite(h) else float(h) for h in hr])
    tmp = out / f"{case}.tmp{os.getpid()}.json"
    tmp.write_text(json.dumps(meta))
    os.replace(tmp, out / f"{case}.json")


def build_case_shards(root: Path, case_ids: Sequence[str], channels: Sequence[str], channel_specs: dict[str, Any],
                      options: dict[str, Any], shard_dir: Path, workers: int = 1) -> int:
    """Build the shards of ``case_ids`` that are missing or stale in ``shard_dir``; returns how many were built."""
    settings = settings_fingerprint(channels, channel_specs, options)
    files = case_files(root)
    shard_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for case in case_ids:
        path = files.get(case)
        fingerprint = _case_fingerprint(path, settings)
        meta = _shard_meta(shard_dir, case)
        if meta is not None and fingerprint is not None and meta.get("fingerprint") == fingerprint:
            continue
        jobs.append((case, str(path) if path else None, list(channels), channel_specs, options, str(shard_dir),
                     fingerprint))
    if not jobs:
        return 0
    log.info("Building windows of %d case(s) with %d process(es) -> %s", len(jobs), workers, shard_dir)
    if workers > 1 and len(jobs) > 1:
        # the platform's default start method (fork on Linux, as torch's DataLoader): workers need only numpy/scipy
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(build_case, jobs, chunksize=1):
                pass
    else:
        for job in jobs:
            build_case(job)
    return len(jobs)


def merge_shards(shard_dir: Path, case_ids: Sequence[str], channels: Sequence[str], length: int, stem: Path,
                 fingerprint: str, settings: str | None = None) -> dict[str, Any]:
    """Stream the shards of ``case_ids`` into ``<stem>.npy`` (+ ``.meta.npz``); returns the summary.

    A case without a shard is an error naming the shard command, so a cluster build cannot silently lose a
    case range; so is a shard built with other ``settings``; cases whose shard records a failure are listed
    in the summary's ``skipped``.
    """
    metas, missing = [], []
    for case in case_ids:
        meta = _shard_meta(shard_dir, case)
        (missing.append(case) if meta is None else metas.append(meta))
    stale = [m["case"] for m in metas if settings and m["fingerprint"] and not m["fingerprint"].startswith(settings)]
    if stale:
        raise BioexpError(f"{len(stale)} shard(s) in {shard_dir} were built with other settings (first: {stale[:3]}); "
                          "rebuild them with the same --channels/--channels-yaml/--windows-yaml")
    if missing:
        raise BioexpError(f"{len(missing)} case(s) have no shard in {shard_dir} (first: {missing[:3]}); build "
                          "them (`python -m bioexp.data.vitaldb build-windows ... --shard i/n` for every i) first")
    used = [m for m in metas if m["windows"]]
    total = sum(m["windows"] for m in used)
    rejected: Counter = Counter()
    for m in metas:
        rejected.update(m["rejected"])
    summary = {"cases": len(metas), "cases_used": len(used), "windows": total, "rejected": dict(rejected),
               "skipped": {m["case"]: m["skipped"] for m in metas if "skipped" in m}}
    tmp = stem.with_name(f"{stem.name}.tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(total, len(channels), length))
    row = 0
    for m in used:  # one case in memory at a time
        part = np.load(shard_dir / f"{m['case']}.npy", mmap_mode="r")
        out[row:row + len(part)] = part
        row += len(part)
    out.flush()
    del out
    os.replace(tmp, stem.with_suffix(".npy"))
    _save_meta(stem, np.array([m["case"] for m in used for _ in range(m["windows"])], dtype=str),
               np.array([s for m in used for s in m["starts"]], float),
               np.array([np.nan if h is None else h for m in used for h in m["hr"]], np.float32),
               channels, fingerprint, summary)
    return summary


def build_windows(root: Path, case_ids: Sequence[str], channels: Sequence[str],
                  channel_specs: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> Windows:
    """Windows of ``case_ids`` under ``root`` in memory (small sets); bad cases are skipped, listed in ``summary``."""
    channel_specs, options = merge(CHANNELS, channel_specs), merge(WINDOWS, options)
    check_channels(channels, channel_specs)
    files = case_files(root)
    parts, skipped, rejected = [], {}, Counter()
    for case_id in case_ids:
        try:
            if case_id not in files:
                raise CaseError("no such file")
            data, starts, rates, rej = case_windows(read_case(files[case_id], channels, channel_specs), channels,
                                                    channel_specs, options)
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
