"""Decode-once caches: a stack of fixed-shape arrays in one plain ``.npy`` memmap.

Decoding thousands of WFDB records costs minutes; a memmap of the decoded stack is read at
memory speed by every later run, epoch and dataloader worker (no pickle, no per-process copy).
A cache is keyed by the item list, the per-item shape and a caller-given fingerprint of the
source files, so a changed dataset gets a new cache. It is written to a temporary name and
published by an atomic rename, with its metadata written last: an interrupted build is never
mistaken for a finished one, and a truncated file is detected and rebuilt.
"""

from __future__ import annotations

import errno
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
from filelock import FileLock, Timeout

from bioexp.data.ecg_io import RecordError
from bioexp.errors import BioexpError

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


# What readers raise for a missing, truncated or malformed file. Anything else (TypeError, KeyError, ...)
# is a bug in the reader and propagates, instead of passing for "unreadable record, re-download".
UNREADABLE: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, RecordError)


def _decode(read: Callable[[str], np.ndarray], shape: tuple[int, ...], errors: tuple[type[BaseException], ...],
            item: str) -> np.ndarray | str:
    try:
        arr = read(item)
    except errors as exc:  # a bad file is recorded per item, never aborts the build
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
                 item_errors: tuple[type[BaseException], ...] = (),
                 dtype: np.dtype | str = np.float32) -> ArrayCache:
    """Return the cache of ``read(item)`` for all ``items``, building it if absent, stale or partial.

    ``dtype`` is the stored type (e.g. ``uint8`` for 8-bit frames: a quarter of float32's bytes).

    ``read`` must be picklable (a module-level function or ``functools.partial`` of one) when
    ``workers > 0``. Items whose ``read`` raises one of :data:`UNREADABLE` or ``item_errors`` (a
    reader library's own "bad file" errors) are zero-filled and marked invalid with the reason.
    """
    key = hashlib.sha256(
        json.dumps([CACHE_FORMAT, list(shape), fingerprint, list(items)]).encode()).hexdigest()[:16]
    cache_dir, dtype = Path(cache_dir), np.dtype(dtype)
    found = _load_finished(cache_dir / f"{name}-{key}.npy", cache_dir / f"{name}-{key}.json", key, dtype)
    if found is not None:  # a finished cache is read even from a read-only folder
        return found
    cache_dir = writable_cache_dir(cache_dir)
    npy, meta_path = cache_dir / f"{name}-{key}.npy", cache_dir / f"{name}-{key}.json"
    lock = FileLock(cache_dir / f"{name}-{key}.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("Another run is building %s; waiting for it to finish, then reusing it", npy)
        lock.acquire()
    try:
        found = _load_finished(npy, meta_path, key, dtype)  # built by the run this one waited for
        if found is not None:
            return found
        for stale in cache_dir.glob(f"{name}-{key}.tmp*"):  # left by a killed build (we hold the lock)
            stale.unlink(missing_ok=True)
        return _build(npy, meta_path, key, items, shape, dtype,
                      _map_decode(read, shape, items, workers, (*UNREADABLE, *item_errors)))
    finally:
        lock.release()


def writable_cache_dir(cache_dir: Path) -> Path:
    """``cache_dir`` if a cache can be written there; else (a read-only dataset folder) a user cache dir."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if os.access(cache_dir, os.W_OK):
            return cache_dir
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
    import platformdirs

    fallback = Path(platformdirs.user_cache_dir("bioexp")) / hashlib.sha256(str(cache_dir).encode()).hexdigest()[:12]
    fallback.mkdir(parents=True, exist_ok=True)
    log.info("%s is not writable; caching in %s instead (set data.cache_dir to choose)", cache_dir, fallback)
    return fallback


def _build(npy: Path, meta_path: Path, key: str, items: Sequence[str], shape: tuple[int, ...], dtype: np.dtype,
           results: Iterator[np.ndarray | str]) -> ArrayCache:
    """Write the stack under temporary names, then publish it (array first, metadata last)."""
    name = npy.name.removesuffix(".npy")
    others = [p for p in npy.parent.glob(f"{name.rsplit('-', 1)[0]}-*.npy") if p != npy and ".tmp" not in p.name]
    # Other versions are never deleted here: a concurrent run or sweep worker may be reading them.
    if others:
        size = sum(p.stat().st_size for p in others) / 2**30
        log.info("%d other cache version(s) beside %s (%.1f GiB): delete them when no run uses them", len(others),
                 npy, size)
    log.info("Building cache %s for %d items (once; later runs read the memmap)", npy, len(items))
    tmp, tmp_meta = npy.with_suffix(f".tmp{os.getpid()}.npy"), meta_path.with_suffix(f".tmp{os.getpid()}")
    valid = np.zeros(len(items), dtype=bool)
    errors: dict[str, str] = {}
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(len(items), *shape))
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
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        gib = dtype.itemsize * len(items) * int(np.prod(shape)) / 2**30
        raise BioexpError(f"no space left on the device of {npy.parent} while writing a {gib:.1f} GiB cache "
                          "(the partial file is removed); free space there or set data.cache_dir to a disk "
                          "with room") from None
    finally:
        tmp.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    return ArrayCache(npy, valid, errors)


def _map_decode(read: Callable[[str], np.ndarray], shape: tuple[int, ...], items: Sequence[str],
                workers: int, errors: tuple[type[BaseException], ...]) -> Iterator[np.ndarray | str]:
    """Decoded items in order, streamed so the whole set never sits in memory at once."""
    task = partial(_decode, read, shape, errors)
    if workers <= 0 or len(items) < _SERIAL_BELOW:
        yield from map(task, items)
        return
    # fork: workers inherit the imported modules instead of re-importing torch (seconds each).
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        yield from pool.map(task, items, chunksize=64)
