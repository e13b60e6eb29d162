"""Reading VitalDB cases: ``.vital`` files and WFDB records (single- or multi-segment), each track at its own rate.

Real monitors record every wave at its own sampling rate (a Philips IntelliVue: ECG 500 Hz, PLETH and ABP
125 Hz), so a case is a list of channels, each with its rate; the window builder resamples each to the
target rate on its own. A channel is found by its full track name (``SNUADC/PLETH``) or, on any device, by
the track's own name or one of the channel's aliases (``Intellivue/PLETH``, ``Intellivue/ABP`` for ART).
WFDB multi-segment records (the MIMIC layout: a master header naming segments, optionally a layout
segment, ``~`` gaps) are one case with the gaps as NaN; their segment headers are not cases of their own.

The case index (tracks, rates, duration, BIS presence per case) is built once per root, in parallel, and
cached as JSON keyed by each file's size and mtime, so ``case_set=bis`` does not decompress every file on
every run.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

HR_TRACK = "Solar8000/HR"
INDEX_FORMAT = 1
# what a corrupt or truncated .vital / WFDB file raises inside the readers (gzip's BadGzipFile is an OSError)
READ_ERRORS = (OSError, EOFError, ValueError, IndexError, KeyError, TypeError, AttributeError, struct.error,
               zlib.error)


class CaseError(Exception):
    """A case that cannot give windows (missing track, too short, corrupt): skipped and reported."""


@dataclass
class Recording:
    """Raw channels of one case, each at its own rate (NaN where missing), and the 1 Hz monitor HR if any."""

    signals: list[np.ndarray]
    rates: list[float]
    hr: np.ndarray | None = None

    @property
    def seconds(self) -> float:
        """The duration all channels cover."""
        return min(len(x) / fs for x, fs in zip(self.signals, self.rates, strict=True))


# -- which files are cases -----------------------------------------------------------------------
def _header_tokens(path: Path) -> list[list[str]]:
    with open(path, errors="replace") as f:
        return [line.split() for line in f if line.strip() and not line.lstrip().startswith("#")]


def case_files(root: Path) -> dict[str, Path]:
    """Case id -> file: ``.vital`` files and WFDB records in ``root``; segments of multi-segment records
    (and their layout headers) belong to their master record and are not cases."""
    headers = sorted(root.glob("*.hea"))
    segments: set[str] = set()
    for path in headers:
        try:
            lines = _header_tokens(path)
        except OSError:
            continue
        if lines and "/" in lines[0][0]:  # "name/n_segments ...": a master header
            segments.update(line[0] for line in lines[1:] if line and line[0] != "~")
    files = {p.stem: p for p in headers if p.stem not in segments}
    files.update({p.stem: p for p in sorted(root.glob("*.vital"))})
    return dict(sorted(files.items()))


# -- channel lookup ------------------------------------------------------------------------------
def _names(spec: dict[str, Any]) -> list[str]:
    """A channel's track names without device: the track's own and its aliases (upper case)."""
    own = str(spec["track"]).split("/")[-1]
    return [n.upper() for n in dict.fromkeys([own, *spec.get("wfdb", [])])]


def find_track(tracks: Sequence[str], spec: dict[str, Any]) -> str | None:
    """The track of a channel: its exact name first, else the first alias found on any device."""
    if spec["track"] in tracks:
        return spec["track"]
    by_name = {t.split("/")[-1].upper(): t for t in reversed(list(tracks))}
    return next((by_name[n] for n in _names(spec) if n in by_name), None)


def find_hr_track(tracks: Sequence[str]) -> str | None:
    return find_track(tracks, {"track": HR_TRACK})


# -- reading -------------------------------------------------------------------------------------
def read_case(path: Path, channels: Sequence[str], channel_specs: dict[str, Any], with_hr: bool = True) -> Recording:
    """The raw channels of one case; any reason it cannot be read is a :class:`CaseError` a person understands."""
    try:
        if path.suffix == ".vital":
            rec = _read_vital(path, channels, channel_specs, with_hr)
        else:
            rec = _read_wfdb(path.with_suffix(""), channels, channel_specs)
    except CaseError:
        raise
    except FileNotFoundError as exc:
        raise CaseError(f"a file of the record is missing ({exc.filename or exc})") from exc
    except READ_ERRORS as exc:  # one reason per case
        raise CaseError(f"unreadable: not a valid {'Vital Recorder' if path.suffix == '.vital' else 'WFDB'} file "
                        f"or truncated ({type(exc).__name__}: {exc})") from exc
    empty = [c for c, x in zip(channels, rec.signals, strict=True) if not np.isfinite(x).any()]
    if empty:  # the vitaldb reader returns all-NaN tracks for a truncated file
        raise CaseError(f"no samples in {empty} (empty or truncated file)")
    return rec


def _read_vital(path: Path, channels: Sequence[str], channel_specs: dict[str, Any], with_hr: bool) -> Recording:
    import vitaldb

    wanted = [channel_specs[c]["track"] for c in channels] + [HR_TRACK] * with_hr
    # "/NAME" selects NAME on any device (the reader matches the end of "device/name")
    patterns = list(dict.fromkeys([*wanted, *(f"/{n}" for c in channels for n in _names(channel_specs[c])),
                                   *(["/HR"] if with_hr else [])]))
    vf = vitaldb.VitalFile(str(path), patterns)
    if not vf.trks:
        raise CaseError("unreadable: not a Vital Recorder file, or none of the tracks "
                        f"{[channel_specs[c]['track'] for c in channels]} is in it")
    tracks = list(vf.trks)
    found = {c: find_track(tracks, channel_specs[c]) for c in channels}
    missing = [channel_specs[c]["track"] for c, t in found.items() if t is None]
    if missing:
        raise CaseError(f"missing tracks {missing} (the file has {sorted(tracks)})")
    signals, rates = [], []
    for channel, track in found.items():
        fs = float(vf.trks[track].srate)
        if fs <= 0:
            raise CaseError(f"track {track} for {channel} is not a waveform (no sampling rate)")
        # at its own rate to_numpy returns every sample of the track
        signals.append(vf.to_numpy([track], 1.0 / fs)[:, 0].astype(np.float64))
        rates.append(fs)
    hr_track = find_hr_track(tracks) if with_hr else None
    hr = vf.to_numpy([hr_track], 1.0)[:, 0].astype(np.float64) if hr_track else None
    return Recording(signals, rates, hr)


def _wfdb_layout(record: Path) -> tuple[list[str], float, list[float] | None, int, bool]:
    """Signal names, frame rate, per-signal rates (single segment) and length of a WFDB record."""
    import wfdb

    header = wfdb.rdheader(str(record))
    if isinstance(header, wfdb.MultiRecord):
        names: list[str] = []
        for seg, length in zip(header.seg_name, header.seg_len, strict=True):
            if seg == "~":
                continue
            seg_header = wfdb.rdheader(str(record.parent / seg))
            names += [n for n in seg_header.sig_name if n not in names]
            if length == 0:  # the variable layout's layout segment lists every signal
                break
        return names, float(header.fs), None, int(header.sig_len), True
    spf = header.samps_per_frame or [1] * header.n_sig
    return list(header.sig_name), float(header.fs), [float(header.fs) * s for s in spf], int(header.sig_len), False


def _read_wfdb(record: Path, channels: Sequence[str], channel_specs: dict[str, Any]) -> Recording:
    import wfdb

    names, fs, rates, length, multi = _wfdb_layout(record)
    upper = [n.upper() for n in names]
    index = []
    for channel in channels:
        found = [upper.index(a) for a in _names(channel_specs[channel]) if a in upper]
        if not found:
            raise CaseError(f"no {channel} channel (looked for {channel_specs[channel].get('wfdb', [])}, "
                            f"record has {names})")
        index.append(found[0])
    if multi:  # segments joined, gaps and signals a segment lacks as NaN
        rec = wfdb.rdrecord(str(record), m2s=True, channel_names=[names[i] for i in index])
        if rec.p_signal is None or rec.p_signal.shape[0] < length:
            raise CaseError("truncated signal file")
        return Recording([x.astype(np.float64) for x in rec.p_signal.T], [fs] * len(index))
    rec = wfdb.rdrecord(str(record), channels=index, smooth_frames=False)  # every signal at its own rate
    signals = [np.asarray(x, np.float64) for x in rec.e_p_signal]
    spf = [rates[i] / fs for i in index]
    if any(len(x) < length * s for x, s in zip(signals, spf, strict=True)):
        raise CaseError("truncated signal file")
    return Recording(signals, [rates[i] for i in index])


# -- the case index ------------------------------------------------------------------------------
def case_info(path: Path) -> dict[str, Any]:
    """Tracks (name -> rate), duration (s) and BIS presence of one case, or the reason it cannot be read."""
    try:
        if path.suffix == ".vital":
            import vitaldb

            vf = vitaldb.VitalFile(str(path), header_only=True)
            tracks = {name: float(t.srate) for name, t in vf.trks.items()}
            seconds = float(vf.dtend - vf.dtstart) if vf.dtend and vf.dtstart else None
        else:
            names, fs, rates, length, _ = _wfdb_layout(path.with_suffix(""))
            tracks = dict(zip(names, rates or [fs] * len(names), strict=True))
            seconds = length / fs
    except READ_ERRORS as exc:  # reported per case when its windows are built
        return {"error": f"unreadable ({type(exc).__name__}: {exc})"}
    return {"tracks": tracks, "seconds": seconds, "bis": find_track(list(tracks), {"track": "BIS/BIS"}) is not None}


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def build_index(root: Path, cache: Path | None, workers: int = 1) -> dict[str, dict[str, Any]]:
    """Case id -> :func:`case_info` for every case under ``root``; only new or changed files are read
    (``workers`` processes), the rest come from ``cache`` (JSON, rewritten atomically)."""
    files = case_files(root)
    old: dict[str, Any] = {}
    if cache is not None and cache.is_file():
        try:
            stored = json.loads(cache.read_text())
            old = stored["cases"] if stored.get("format") == INDEX_FORMAT else {}
        except (OSError, ValueError, KeyError):
            old = {}
    index, todo = {}, []
    for case, path in files.items():
        entry = old.get(case)
        if entry is not None and entry.get("file") == path.name and entry.get("stat") == _stat(path):
            index[case] = entry
        else:
            todo.append(case)
    if todo:
        log.info("Indexing %d of %d VitalDB cases in %s (%d process(es))", len(todo), len(files), root, workers)
        paths = [files[c] for c in todo]
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                infos = list(pool.map(case_info, paths, chunksize=max(1, len(paths) // (4 * workers))))
        else:
            infos = [case_info(p) for p in paths]
        for case, path, info in zip(todo, paths, infos, strict=True):
            index[case] = {"file": path.name, "stat": _stat(path), **info}
    index = dict(sorted(index.items()))
    if cache is not None and (todo or set(old) != set(index)):
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"format": INDEX_FORMAT, "root": str(root), "cases": index}))
        os.replace(tmp, cache)
    return index
