"""Write a generated data set all-or-nothing: built in a hidden sibling, moved into place when complete."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging directory that replaces ``out`` on success and is removed on any failure.

    An existing ``out`` is refused unless ``overwrite``, and is removed only after the new one is in place,
    so an interrupted generator never leaves a partial data set (or none) at ``out``.
    """
    out = Path(out)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    staging.mkdir()
    try:
        yield staging
        _publish(staging, out, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path, overwrite: bool) -> None:
    if not (out.exists() or out.is_symlink()):
        os.replace(staging, out)
        return
    if not overwrite:  # appeared while generating
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    os.replace(staging, out)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
