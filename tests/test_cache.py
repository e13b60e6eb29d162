"""The decode-once memmap cache: reuse, staleness, partial files, failed items."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bioexp.data.cache import cached_stack, file_fingerprint


def _sources(tmp_path: Path, n: int = 5) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"item{i}.npy"
        np.save(p, np.full((2, 3), i, dtype=np.float32))
        paths.append(p)
    return paths


def _read(item: str) -> np.ndarray:
    if item.endswith("broken"):
        raise ValueError(f"{item}: cannot decode")
    return np.load(item)


def test_builds_once_then_reuses(tmp_path: Path):
    items = [str(p) for p in _sources(tmp_path)]
    calls: list[str] = []

    def read(item: str) -> np.ndarray:
        calls.append(item)
        return _read(item)

    cache = cached_stack(tmp_path / "c", "demo", items, (2, 3), read, file_fingerprint(list(map(Path, items))))
    arr = cache.open()
    assert arr.shape == (5, 2, 3) and isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr[:, 0, 0], np.arange(5))
    assert len(calls) == 5 and cache.valid.all() and not cache.errors
    again = cached_stack(tmp_path / "c", "demo", items, (2, 3), read, file_fingerprint(list(map(Path, items))))
    assert len(calls) == 5 and again.path == cache.path


def test_changed_source_gets_a_new_cache_and_the_old_one_stays_for_runs_still_reading_it(tmp_path: Path):
    paths = _sources(tmp_path)
    items = [str(p) for p in paths]
    first = cached_stack(tmp_path / "c", "demo", items, (2, 3), _read, file_fingerprint(paths))
    np.save(paths[2], np.full((2, 3), 42, dtype=np.float32))
    os.utime(paths[2], ns=(1, 1))  # a different mtime, whatever the clock resolution
    second = cached_stack(tmp_path / "c", "demo", items, (2, 3), _read, file_fingerprint(paths))
    assert second.path != first.path and first.path.exists()
    assert second.open()[2, 0, 0] == 42 and first.open()[2, 0, 0] != 42


def test_truncated_or_unfinished_cache_is_rebuilt(tmp_path: Path):
    items = [str(p) for p in _sources(tmp_path)]
    cache = cached_stack(tmp_path / "c", "demo", items, (2, 3), _read)
    with open(cache.path, "r+b") as f:
        f.truncate(cache.path.stat().st_size - 8)
    rebuilt = cached_stack(tmp_path / "c", "demo", items, (2, 3), _read)
    np.testing.assert_array_equal(rebuilt.open()[:, 1, 2], np.arange(5))
    meta = cache.path.with_suffix(".json")
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "complete": False}))
    calls: list[str] = []
    cached_stack(tmp_path / "c", "demo", items, (2, 3), lambda i: calls.append(i) or _read(i))
    assert len(calls) == 5


def test_failed_items_are_marked_and_explained(tmp_path: Path):
    items = [str(p) for p in _sources(tmp_path, 3)] + [str(tmp_path / "x.broken"), str(tmp_path / "missing.npy")]
    cache = cached_stack(tmp_path / "c", "demo", items, (2, 3), _read)
    assert cache.valid.tolist() == [True, True, True, False, False]
    assert "cannot decode" in cache.errors[items[3]] and "missing.npy" in cache.errors[items[4]]
    assert (cache.open()[3:] == 0).all()


def test_parallel_decoding_gives_the_same_cache(tmp_path: Path):
    items = [str(p) for p in _sources(tmp_path, 300)]
    serial = cached_stack(tmp_path / "a", "demo", items, (2, 3), _read, workers=0).open()
    parallel = cached_stack(tmp_path / "b", "demo", items, (2, 3), _read, workers=2).open()
    np.testing.assert_array_equal(serial, parallel)
