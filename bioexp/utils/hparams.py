"""Train with a sweep's best parameters, for every study.

``python -m bioexp.train experiment=csi hparams_from=<sweep dir>/optimization_results.yaml`` (or the sweep
dir itself) replaces ``hparams_from=...`` on the command line by the sweep's ``best_params`` as Hydra
overrides (``model/backbone=chexnet model.optimizer.lr=0.00031 ...``) before Hydra parses it. So config
groups and values compose exactly as if typed (also in a ``-m`` multirun, e.g. over seeds), Hydra saves
them in the run dir's ``.hydra/overrides.yaml``, and ``hparams_from`` itself is kept in the config.
An override the command line also gives wins over the file's.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bioexp.errors import BioexpError

KEY = "hparams_from"
RESULTS = "optimization_results.yaml"  # written by the sweepers (bioexp.sweep, hydra-optuna-sweeper)
_PLAIN = re.compile(r"[A-Za-z_][\w\-./]*")  # a string Hydra reads back unchanged without quotes
_KEYWORDS = {"true", "false", "null", "nan", "inf"}


def override_value(value: Any) -> str:
    """A sweep parameter's value as Hydra override text that parses back to the same value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) and value.lower() not in _KEYWORDS:
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise BioexpError(f"{KEY}: cannot express the parameter value {value!r} ({type(value).__name__}) as an override")


def results_file(path: str | Path) -> Path:
    """The sweep result a ``hparams_from`` value names (a sweep dir means its ``optimization_results.yaml``)."""
    path = Path(path).expanduser().resolve()
    return path / RESULTS if path.is_dir() else path


def best_overrides(path: str | Path) -> list[str]:
    """``key=value`` overrides of a sweep result's ``best_params`` (YAML or JSON)."""
    path = results_file(path)
    if not path.is_file():
        raise BioexpError(f"{KEY}={path}: no such file; give a sweep's {RESULTS} (in its multirun dir) or that dir")
    try:
        results = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BioexpError(f"{KEY}={path} is not YAML/JSON ({' '.join(str(exc).split()[:12])})") from None
    params = results.get("best_params") if isinstance(results, dict) else None
    if isinstance(results, dict) and "solutions" in results and params is None:
        raise BioexpError(f"{KEY}={path} is a multi-objective sweep with several best trials; copy the chosen "
                          "trial's params as overrides instead")
    if not isinstance(params, dict) or not params:
        raise BioexpError(f"{KEY}={path} has no best_params mapping (a sweep's {RESULTS} with at least one "
                          "completed trial)")
    return [f"{key}={override_value(value)}" for key, value in params.items()]


def _override_key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def expand_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``hparams_from=PATH`` replaced by the sweep's best overrides (the ones ``argv`` sets
    itself left out) followed by ``++hparams_from=PATH``; unchanged without it."""
    argv = list(argv)
    given = [i for i, arg in enumerate(argv) if arg.startswith((f"{KEY}=", f"+{KEY}=", f"++{KEY}="))]
    if not given:
        return argv
    if len(given) > 1:
        raise BioexpError(f"{KEY} is given {len(given)} times; give one sweep result")
    i = given[0]
    path = results_file(argv[i].split("=", 1)[1])
    explicit = {_override_key(arg) for arg in argv[1:] if "=" in arg and not arg.startswith("-")}
    overrides = [o for o in best_overrides(path) if _override_key(o) not in explicit]
    return [*argv[:i], *overrides, f"++{KEY}={override_value(str(path))}", *argv[i + 1:]]
