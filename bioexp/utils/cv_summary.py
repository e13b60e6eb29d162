"""Hydra callback that summarises a patient cross-validation multirun: per-fold test metrics, mean and std."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bioexp.utils.collect import to_markdown

log = logging.getLogger(__name__)


class CrossValidationSummary(Callback):
    """At the end of a multirun, tabulate every job's ``metrics.json`` metrics starting with ``prefix``.

    Rows are the folds (``data.fold`` of each job's config) followed by ``mean`` and ``std``; written as
    ``cv_summary.csv`` and ``cv_summary.md`` in the sweep dir. Never raises: a finished sweep must not fail.
    """

    def __init__(self, prefix: str = "test/", filename: str = "metrics.json") -> None:
        self.prefix = prefix
        self.filename = filename
        self._job_dirs: list[Path] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_dirs.clear()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        if output_dir:
            self._job_dirs.append(Path(str(output_dir)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.summarise(Path(str(config.hydra.sweep.dir)), self._job_dirs)
        except Exception as err:
            log.warning("CrossValidationSummary: no summary (%s: %s)", type(err).__name__, err)

    def summarise(self, sweep_dir: Path, job_dirs: list[Path]) -> pd.DataFrame | None:
        rows = {}
        for job_dir in job_dirs:
            metrics_file = job_dir / self.filename
            if not metrics_file.is_file():
                continue
            metrics = json.loads(metrics_file.read_text())["metrics"]
            config_file = job_dir / ".hydra" / "config.yaml"
            fold = OmegaConf.select(OmegaConf.load(config_file), "data.fold") if config_file.is_file() else None
            # per-patient entries (test/<patient>/...) stay in each job's test_per_patient.csv
            rows[f"fold {job_dir.name if fold is None else fold}"] = {
                k.removeprefix(self.prefix): v for k, v in metrics.items()
                if k.startswith(self.prefix) and "/" not in k.removeprefix(self.prefix)}
        if not rows:
            log.info("CrossValidationSummary: no job under %s wrote %s", sweep_dir, self.filename)
            return None
        table = pd.DataFrame.from_dict(rows, orient="index").sort_index()
        table = pd.concat([table, table.mean().to_frame("mean").T, table.std(ddof=0).to_frame("std").T]).round(4)
        table.index.name = "fold"
        table.to_csv(sweep_dir / "cv_summary.csv")
        (sweep_dir / "cv_summary.md").write_text(to_markdown(table), encoding="utf-8")
        log.info("CrossValidationSummary: %d fold(s); wrote %s\n%s", len(rows), sweep_dir / "cv_summary.csv",
                 to_markdown(table))
        return table
