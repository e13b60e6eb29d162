"""Decode-once caches: a stack of fixed-shape arrays in one plain ``.npy`` memmap.

Decoding thousands of WFDB records costs minutes; a memmap of the decoded stack is read at
memory speed by every later run, epoch and dataloader worker (no pickle, no per-process copy).
A cache is keyed by the item list, the per-item shape and a caller-given fingerprint of the
source files, so a changed dataset gets a new cache. It is written to a temporary name and
published by an atomic rename, with its metadata written last: an interrupted build is never
mistaken for a finished one, and a truncated file is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_SERIAL_BELOW = 256  # items; a process pool costs more than it saves on small sets


@dataclass(frozen=True)
class ArrayCache:
    """A finished cache: the ``.npy`` path, which items decoded, and why the others did not."""

    path: Path
    valid: np.ndarray
    errors: dict[str, str]

    def open(self) -> np.ndarray:
        return np.load(self.path, mmap_mode="r")


def file_fingerprint(paths: Sequence[Path]) -> str:
    """Size and mtime of each file (missing ones included), hashed: cheap staleness detection."""
    h = hashlib.sha256()
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()


def _decode(read: Callable[[str], np.ndarray], shape: tuple[int, ...], item: str) -> np.ndarray | str:
    try:
        arr = read(item)
    except Exception as exc:  # any failure is recorded per item, never aborts the build
        return str(exc)
    if arr.shape != shape:
        return f"{item}: shape {arr.shape}, expected {shape}"
    return arr


def _load_finished(npy: Path, meta_path: Path, key: str, dtype: np.dtype) -> ArrayCache | None:
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key or not meta.get("complete"):
            return None
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if arr.shape != tuple(meta["shape"]) or arr.dtype != dtype or npy.stat().st_size != meta["nbytes"]:
        return None
    return ArrayCache(npy, np.asarray(meta["valid"], dtype=bool), meta["errors"])


def cached_stack(cache_dir: str | Path, name: str, items: Sequence[str], shape: tuple[int, ...],
                 read: Callable[[str], np.ndarray], fingerprint: str = "", workers: int = 0,
                 dtype: np.dtype | str = np.float32) -> ArrayCache:
    """Return the cache of ``read(item)`` for all ``items``, building it if absent, stale or partial.

    ``dtype`` is the stored type (e.g. ``uint8`` for 8-bit frames: a quarter of float32's bytes).

    ``read`` must be picklable (a module-level function or ``functools.partial`` of one) when
    ``workers > 0``. Items whose ``read`` raises are zero-filled and marked invalid with the reason.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(
        json.dumps([CACHE_FORMAT, list(shape), fingerprint, list(items)]).encode()).hexdigest()[:16]
    npy, meta_path = cache_dir / f"{name}-{key}.npy", cache_dir / f"{name}-{key}.json"
    dtype = np.dtype(dtype)
    found = _load_finished(npy, meta_path, key, dtype)
    if found is not None:
        return found
    # Other versions are never deleted here: a concurrent run or sweep worker may be reading them.
    others = [p for p in cache_dir.glob(f"{name}-*.npy") if p != npy and ".tmp" not in p.name]
    if others:
        size = sum(p.stat().st_size for p in others) / 2**30
        log.info("%d other %s cache(s) in %s (%.1f GiB): delete them when no run uses them", len(others), name,
                 cache_dir, size)
    log.info("Building cache %s for %d items (once; later runs read the memmap)", npy, len(items))
    tmp = npy.with_suffix(f".tmp{os.getpid()}.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(items), *shape))
    valid = np.zeros(len(items), dtype=bool)
    errors: dict[str, str] = {}
    results = _map_decode(read, shape, items, workers)
    for i, (item, res) in enumerate(zip(items, results, strict=True)):
        if isinstance(res, str):
            errors[item] = res
        else:
            out[i] = res
            valid[i] = True
    out.flush()
    del out
    os.replace(tmp, npy)
    meta = {"key": key, "complete": True, "shape": [len(items), *shape], "nbytes": npy.stat().st_size,
            "valid": valid.tolist(), "errors": errors}
    tmp_meta = meta_path.with_suffix(f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, meta_path)
    return ArrayCache(npy, valid, errors)


def _map_decode(read: Callable[[str], np.ndarray], shape: tuple[int, ...], items: Sequence[str],
                workers: int) -> Iterator[np.ndarray | str]:
    """Decoded items in order, streamed so the whole set never sits in memory at once."""
    task = partial(_decode, read, shape)
    if workers <= 0 or len(items) < _SERIAL_BELOW:
        yield from map(task, items)
        return
    # fork: workers inherit the imported modules instead of re-importing torch (seconds each).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(task, items, chunksize=64)
