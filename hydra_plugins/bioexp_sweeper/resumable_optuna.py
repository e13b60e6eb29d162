"""``hydra.sweeper._target_`` of ``conf/hydra/sweeper/bioexp_optuna.yaml``; the loop is ``bioexp.sweep``.

Hydra imports every module of ``hydra_plugins`` at start-up, so this one stays light: Optuna and the
sweep loop are imported when a sweeper is built.
"""

from __future__ import annotations

from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper


class ResumableOptunaSweeper(OptunaSweeper):
    """The Optuna plugin's sweeper (same config schema) running :class:`bioexp.sweep.StudySweep`."""

    def __init__(self, **kwargs: Any) -> None:
        from bioexp.sweep import StudySweep

        super().__init__(**kwargs)
        self.sweeper = StudySweep(**kwargs)
