"""Hydra callbacks that turn a finished multirun into tables: the few-shot comparison and the seed summary.

Both are on for every multirun (``hydra.callbacks.collect_results`` in ``conf/hydra/default.yaml``, not
the ``callbacks`` group, which holds Lightning callbacks); a multirun whose jobs wrote no
``few_shot.csv`` (e.g. a supervised Optuna sweep) just logs that there was nothing to compare.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from bioexp.probe import comparison_table

log = logging.getLogger(__name__)


def pool_jobs(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Merge several jobs' few-shot tables of one model (e.g. pretraining seeds) into one, row by row on k.

    Means (every numeric column) are averaged over jobs. Each ``<m>_std`` becomes the spread over all
    (job, subset seed) pairs, by the law of total variance with ddof=0 (exact when jobs used equally many seeds),
    so "±" keeps meaning "over every fit" rather than hiding the variation between jobs. ``n_jobs`` counts them.
    """
    rows = pd.concat([t.assign(k=t["k"].astype(str)) for t in tables], ignore_index=True)
    groups = rows.groupby("k", sort=False)
    out = groups.mean(numeric_only=True)
    for std in [c for c in out.columns if c.endswith("_std") and f"{c[:-4]}_mean" in out.columns]:
        within = groups[std].apply(lambda s: float(np.mean(np.square(s))))
        between = groups[f"{std[:-4]}_mean"].var(ddof=0)
        out[std] = np.sqrt(within + between)
    out["n_jobs"] = groups.size()
    return out.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    """A pipe table with the index as first column (``DataFrame.to_markdown`` needs ``tabulate``, not a dependency)."""
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for index, row in zip(table.index, table.values, strict=True):
        lines.append("| " + " | ".join(map(str, [index, *row])) + " |")
    return "\n".join(lines) + "\n"


def _job_order(path: Path) -> tuple[bool, int, str]:
    """Job dirs in job-number order (2 before 10), anything else after them."""
    return (not path.name.isdigit(), int(path.name) if path.name.isdigit() else 0, str(path))


class CollectResults(Callback):
    """At the end of a multirun, gather every job's ``filename`` and write ``comparison.csv``/``.md`` to the sweep dir.

    Jobs are grouped (rows of the table) by the dotted key ``group_by`` of their composed config
    (``<job dir>/.hydra/config.yaml``); jobs of one group are pooled with :func:`pool_jobs`. Jobs that wrote no file
    (failed, or not evaluating) are skipped and counted. Never raises: a finished sweep must not end in an error.
    """

    def __init__(self, filename: str = "few_shot.csv", group_by: str = "task_name", metric: str = "auroc") -> None:
        self.filename = filename
        self.group_by = group_by
        self.metric = metric
        self._job_dirs: set[Path] = set()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_dirs.clear()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # bioexp's sweep dir interpolates ${task_name}: sweeping task_name puts jobs outside the sweep dir, so
        # remember where they ran (local launchers call this in the sweeping process).
        output_dir = OmegaConf.select(config, "hydra.runtime.output_dir", default=None)
        if output_dir:
            self._job_dirs.add(Path(str(output_dir)).resolve())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.collect(Path(str(config.hydra.sweep.dir)))
        except Exception as err:
            log.warning("CollectResults: no comparison table (%s: %s)", type(err).__name__, err)

    def collect(self, sweep_dir: Path) -> pd.DataFrame | None:
        """Build, write and log the comparison table; returns it, or None when no job wrote ``filename``."""
        sweep_dir = sweep_dir.resolve()
        found = {d for d in sweep_dir.glob("*") if (d / ".hydra").is_dir() or (d / self.filename).is_file()}
        job_dirs = sorted(found | self._job_dirs, key=_job_order)
        tables: dict[str, list[pd.DataFrame]] = {}
        skipped = 0
        for job_dir in job_dirs:
            if not (job_dir / self.filename).is_file():
                skipped += 1
                continue
            tables.setdefault(self._group(job_dir), []).append(pd.read_csv(job_dir / self.filename, dtype={"k": str}))
        if not tables:
            log.info("CollectResults: none of %d job(s) under %s wrote %s; nothing written", len(job_dirs),
                        sweep_dir, self.filename)
            return None
        table = comparison_table({group: pool_jobs(t) for group, t in tables.items()}, metric=self.metric)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        table.to_csv(sweep_dir / "comparison.csv")
        markdown = to_markdown(table)
        (sweep_dir / "comparison.md").write_text(markdown, encoding="utf-8")
        log.info("CollectResults: %s of %d job(s) in %d group(s); %d job(s) without %s skipped; wrote %s and .md\n%s",
                 self.metric, sum(map(len, tables.values())), len(tables), skipped, self.filename,
                 sweep_dir / "comparison.csv", markdown)
        return table

    def _group(self, job_dir: Path) -> str:
        """The job's ``group_by`` value; the job dir's name when the config is missing or cannot resolve it."""
        config_file = job_dir / ".hydra" / "config.yaml"
        value = None
        if config_file.is_file():
            value = OmegaConf.select(OmegaConf.load(config_file), self.group_by, throw_on_resolution_failure=False)
        if value is None:
            log.warning("CollectResults: %s has no %s; grouping it as %r", job_dir, self.group_by, job_dir.name)
            return job_dir.name
        return str(value)


class SeedSummary(Callback):
    """At the end of a multirun over ``seed=``: mean ± std (over seeds) of every final metric, per configuration.

    Jobs are grouped by their overrides other than ``seed``; each job's final metrics come from its
    ``metrics.json``. Writes ``seed_summary.csv`` (``<metric>_mean``/``_std`` columns, ``n_seeds``) and
    ``seed_summary.md`` (``mean ± std``) to the sweep dir and logs the table. A multirun that does not sweep
    ``seed`` writes nothing. Never raises.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self.summarize(Path(str(config.hydra.sweep.dir)))
        except Exception as err:
            log.warning("SeedSummary: no seed summary (%s: %s)", type(err).__name__, err)

    def summarize(self, sweep_dir: Path) -> pd.DataFrame | None:
        """Build, write and log the table; None when fewer than two seeds finished."""
        rows = []
        for job_dir in sorted(sweep_dir.glob("*"), key=_job_order):
            overrides_file, metrics_file = job_dir / ".hydra" / "overrides.yaml", job_dir / "metrics.json"
            if not (overrides_file.is_file() and metrics_file.is_file()):
                continue
            overrides = [str(o) for o in OmegaConf.load(overrides_file)]
            if not any(o.startswith("seed=") for o in overrides):
                continue
            others = " ".join(o for o in overrides if not o.startswith("seed=")) or "(defaults)"
            rows.append({"config": others, **json.loads(metrics_file.read_text())["metrics"]})
        if len(rows) < 2:
            return None
        groups = pd.DataFrame(rows).groupby("config", sort=False)
        means, stds = groups.mean(numeric_only=True), groups.std(numeric_only=True, ddof=1)
        table = means.add_suffix("_mean").join(stds.add_suffix("_std"))
        table = table[[f"{m}_{s}" for m in means.columns for s in ("mean", "std")]]
        table["n_seeds"] = groups.size()
        table.to_csv(sweep_dir / "seed_summary.csv")
        shown = pd.DataFrame({m: [f"{a:.4g} ± {b:.2g}" for a, b in zip(means[m], stds[m].fillna(0), strict=True)]
                              for m in means.columns}, index=means.index).T
        markdown = to_markdown(shown)
        (sweep_dir / "seed_summary.md").write_text(markdown, encoding="utf-8")
        log.info("Seed summary (mean ± std over seeds, %s): wrote %s\n%s",
                 ", ".join(f"{c}: {n}" for c, n in table["n_seeds"].items()), sweep_dir / "seed_summary.csv", markdown)
        return table
