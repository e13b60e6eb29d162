"""Reading ECG records in WFDB format, resampling and cropping them.

Shared by every ECG dataset: PTB-XL records, and other PhysioNet databases whose lead names
differ only in case (PTB's ``i ii ... v6`` vs PTB-XL's ``I II ... V6``).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import wfdb
from scipy.signal import find_peaks, resample_poly

STANDARD_LEADS = ("I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")


# What wfdb raises on a malformed record (measured on corrupted copies of a real one): HeaderSyntaxError
# (a ValueError) for a garbled record line, IndexError for an empty or short header, KeyError for an
# unknown sample format, ValueError for a truncated or empty signal file, UnicodeDecodeError (a
# ValueError) for binary junk, OSError for unreadable files. Anything else is a bug and propagates.
WFDB_ERRORS = (ValueError, LookupError, OSError)


class RecordError(Exception):
    """A record that is missing, truncated or unreadable; datasets skip and count these."""


def read_leads(path: str | Path, leads: tuple[str, ...] = STANDARD_LEADS,
               fill_gaps: bool = False) -> tuple[np.ndarray, float]:
    """Read ``leads`` (matched case-insensitively) of a WFDB record as ``[C, T]`` float32 mV.

    A record whose signal is shorter than its header promises (an interrupted download) is an
    error, not a silently shorter array. WFDB marks invalid samples as NaN (ICU recordings have
    such gaps): an error unless ``fill_gaps``, which interpolates them linearly.
    """
    path = str(path)
    try:
        header = wfdb.rdheader(path)
    except FileNotFoundError as exc:
        raise RecordError(f"{path}: header missing") from exc
    except WFDB_ERRORS as exc:
        raise RecordError(f"{path}: unreadable header ({exc})") from exc
    names = [n.upper() for n in header.sig_name]
    missing = [lead for lead in leads if lead.upper() not in names]
    if missing:
        raise RecordError(f"{path}: leads {missing} not in record (has {header.sig_name})")
    channels = [names.index(lead.upper()) for lead in leads]
    try:
        record = wfdb.rdrecord(path, channels=channels)
    except FileNotFoundError as exc:
        raise RecordError(f"{path}: signal file missing") from exc
    except WFDB_ERRORS as exc:
        raise RecordError(f"{path}: truncated or unreadable signal ({exc})") from exc
    signal = record.p_signal
    if signal is None or signal.shape[0] < header.sig_len:
        got = 0 if signal is None else signal.shape[0]
        raise RecordError(f"{path}: truncated ({got} of {header.sig_len} samples)")
    signal = np.ascontiguousarray(signal.T, dtype=np.float32)
    invalid = ~np.isfinite(signal)
    if invalid.any():
        if not fill_gaps or invalid.all(axis=1).any():
            raise RecordError(f"{path}: {int(invalid.sum())} invalid (NaN) samples")
        t = np.arange(signal.shape[1])
        for lead in np.flatnonzero(invalid.any(axis=1)):
            bad = invalid[lead]
            signal[lead, bad] = np.interp(t[bad], t[~bad], signal[lead, ~bad])
    return signal, float(header.fs)


def resample(signal: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Polyphase resampling along the last axis, anti-aliased (unlike picking every n-th sample)."""
    if fs_in == fs_out:
        return signal
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    out = resample_poly(signal, ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(signal.dtype, copy=False)


def crop_windows(signal: np.ndarray, length: int, stride: int | None = None) -> np.ndarray:
    """Cut ``[C, T]`` into ``[N, C, length]`` windows every ``stride`` samples (default: no overlap)."""
    stride = stride or length
    if signal.shape[-1] < length:
        raise ValueError(f"signal of {signal.shape[-1]} samples is shorter than one window ({length})")
    starts = range(0, signal.shape[-1] - length + 1, stride)
    return np.stack([signal[:, s : s + length] for s in starts])


def r_peaks(signal: np.ndarray, fs: float, refractory_s: float = 0.25) -> np.ndarray:
    """Sample indices of R peaks in a ``[C, T]`` ECG, from all leads at once.

    A slope-energy detector: the summed absolute first difference over leads, smoothed over
    ~40 ms, peaks above half its robust maximum at least ``refractory_s`` apart; each detection
    is moved to the largest summed absolute amplitude within +-60 ms (the R wave itself).
    Good enough to centre beat windows; not a clinical-grade detector.
    """
    slope = np.abs(np.diff(signal, axis=-1)).sum(axis=0)
    width = max(1, round(0.04 * fs))
    energy = np.convolve(slope, np.ones(width) / width, mode="same")
    height = 0.5 * np.percentile(energy, 99)
    found, _ = find_peaks(energy, height=height, distance=max(1, round(refractory_s * fs)))
    amplitude = np.abs(signal - np.median(signal, axis=-1, keepdims=True)).sum(axis=0)
    half = round(0.06 * fs)
    return np.array([lo + int(np.argmax(amplitude[lo : p + half + 1])) for p in found
                     for lo in [max(0, p - half)]], dtype=np.int64)
