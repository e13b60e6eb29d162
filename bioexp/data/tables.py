"""Metadata tables (CSV) read with one clear error when the file is not the table it should be."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bioexp.errors import BioexpError


def require_columns(df: pd.DataFrame, columns: Sequence[str], path: str | Path) -> None:
    """Fail with the missing column names (and the ones present) unless ``df`` has all of ``columns``."""
    present = [str(c) for c in (*([df.index.name] if df.index.name else []), *df.columns)]
    missing = [c for c in columns if c not in present]
    if missing:
        shown = ", ".join(present[:12]) + (", ..." if len(present) > 12 else "")
        raise BioexpError(f"{path} lacks required column(s) {', '.join(missing)} (it has: {shown or 'none'}); "
                          "is it the right file, unmodified?")


def read_table(path: str | Path, columns: Sequence[str], index_col: str | int | None = None) -> pd.DataFrame:
    """``pd.read_csv(path)`` checked for ``columns`` (a named ``index_col`` among them) before it is indexed;
    an integer ``index_col`` indexes by that (unnamed) column, as ``pd.read_csv`` would."""
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BioexpError(f"{path} is not a readable CSV table ({' '.join(str(exc).split())[:200]})") from exc
    require_columns(df, [*([index_col] if isinstance(index_col, str) else []), *columns], path)
    if isinstance(index_col, int):
        return df.set_index(df.columns[index_col]).rename_axis(None)
    return df.set_index(index_col) if index_col else df
