"""Loggers that never stop training, and final results where W&B and TensorBoard users look for them."""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

from bioexp.utils.run import instantiate_group

log = logging.getLogger(__name__)


def start_loggers(group: DictConfig | None) -> list[Any]:
    """Instantiate the ``logger`` group; a W&B logger that cannot reach its server falls back to offline.

    The W&B run is started here, before training, so an unreachable server costs at most
    ``WANDB_INIT_TIMEOUT`` (30 s unless set) once, with one warning, instead of an exception mid-run.
    """
    from hydra.utils import instantiate
    from lightning.pytorch.loggers import WandbLogger

    loggers = instantiate_group(group)
    for i, logger in enumerate(loggers):
        if not isinstance(logger, WandbLogger) or logger._offline:
            continue
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
        try:
            logger.experiment  # noqa: B018 — starts the run (rank 0) and contacts the server
        except Exception as err:  # noqa: BLE001 — any W&B failure: keep training, offline
            name = next(k for k, c in group.items() if c is not None and c.get("_target_", "").endswith("WandbLogger"))
            log.warning("W&B unreachable (%s); logging offline instead: upload later with `wandb sync`",
                        str(err).splitlines()[0][:200])
            loggers[i] = instantiate(group[name], offline=True, mode="offline", _convert_="all")
    return loggers


def publish_results(loggers: list[Any], hparams: dict[str, Any], metrics: dict[str, float],
                    optimized: tuple[str | None, float | None]) -> None:
    """Final metrics (and the best value of the optimised metric) into the W&B run summary and TensorBoard's
    hparams tab (so runs of a sweep compare there); prints the `wandb sync` command for offline runs."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    name, value = optimized
    final = {**metrics, **({f"best/{name}": value} if name and value is not None else {})}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            run = logger.experiment
            run.summary.update(final)
            if logger._offline and getattr(run, "dir", None):
                log.info("W&B run saved offline; upload it with: wandb sync %s", os.path.dirname(run.dir))
        elif isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(hparams, metrics={f"final/{k}": v for k, v in final.items()})
