"""Fallbacks that change what is trained or evaluated: one WARNING each, and a list for ``metrics.json``.

``warn_fallback`` logs the first occurrence of a message in each process and counts the rest.
Dataloader workers are other processes: while a run is recording (``start_recording``), they append
their occurrences to a spool file in the run dir, so :func:`recorded` sees them too.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

log = logging.getLogger("bioexp")

_counts: Counter[str] = Counter()
_owner: int | None = None  # the process that records (the runner); others spool
_spool: Path | None = None


def start_recording(run_dir: str | Path) -> None:
    """Start a run's list (a previous run's in this process is dropped)."""
    global _owner, _spool
    _counts.clear()
    _owner, _spool = os.getpid(), Path(run_dir) / ".fallbacks"
    _spool.unlink(missing_ok=True)


def warn_fallback(message: str) -> None:
    """Report a fallback; ``message`` should be the same text for every occurrence (no per-item details)."""
    if not _counts[message]:
        log.warning("%s", message)
    _counts[message] += 1
    if _spool is not None and os.getpid() != _owner:
        with open(_spool, "a") as f:  # one short append per line: whole lines even from concurrent workers
            f.write(message.replace("\n", " ") + "\n")


def recorded() -> list[str]:
    """Each fallback of this run once, with how often it happened when more than once."""
    counts = Counter(_counts) if os.getpid() == _owner or _owner is None else Counter()
    if _spool is not None and _spool.is_file():
        counts.update(line for line in _spool.read_text().splitlines() if line)
    return [m if n == 1 else f"{m} ({n} times)" for m, n in counts.items()]
