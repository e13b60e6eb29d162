"""Run several ``python -m bioexp.train`` command lines in one process (saves a start-up per case).

Usage: ``python -m tests.cli_cases OUT.json ARGS_1 -- ARGS_2 -- ...``. Each case runs the real entry
point with its own ``sys.argv``; its exit code and what it printed on stderr go to ``OUT.json``.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

from hydra.core.global_hydra import GlobalHydra

from bioexp.train import main


def run_case(args: list[str]) -> dict:
    err = io.StringIO()
    sys.argv = ["bioexp.train", *args]
    GlobalHydra.instance().clear()
    code: int | str | None = 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code
    return {"args": args, "rc": code, "stderr": err.getvalue()}


if __name__ == "__main__":
    out, rest = sys.argv[1], sys.argv[2:]
    cases, current = [], []
    for arg in [*rest, "--"]:
        if arg == "--":
            cases.append(current)
            current = []
        else:
            current.append(arg)
    with open(out, "w") as f:
        json.dump([run_case(c) for c in cases if c], f)
