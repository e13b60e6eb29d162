"""Lightning's CSVLogger, made safe for ``trainer=ddp_sim`` (``ddp_spawn``) runs that fit and then test.

Each spawned stage gets a pickled copy of the main process's writer, which never saw the keys the
fit stage's rank 0 wrote; when the test stage adds its keys, Lightning rewrites ``metrics.csv`` with
a header lacking the fit keys and fails (``dict contains fields not in fieldnames``). This writer
takes the header of the file on disk into account before every save.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as _CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _HeaderMergingWriter(ExperimentWriter):
    def _record_new_keys(self) -> set[str]:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                on_disk = next(csv.reader(file), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(on_disk))
        return super()._record_new_keys()


class CSVLogger(_CSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with a writer that keeps every column already on disk."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HeaderMergingWriter(log_dir=self.log_dir)
        return self._experiment
