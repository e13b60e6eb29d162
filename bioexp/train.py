"""``python -m bioexp.train``: compose the config, build data + task + trainer, fit, test, report.

Heavy imports (torch, Lightning) happen inside :func:`train`, so ``--help``, ``--cfg job`` and
config errors answer in about a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import bioexp.utils.resolvers  # noqa: F401  (registers ${launch_dir:}, ${wandb_offline:})
from bioexp.errors import BioexpError
from bioexp.utils.run import report_user_errors

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def train(cfg: DictConfig) -> tuple[dict[str, Any], float | None]:
    """Run one experiment; returns ``metrics.json``'s content and the optimised metric's value."""
    import lightning as L
    from hydra.utils import instantiate
    from lightning.fabric.utilities.rank_zero import rank_zero_only
    from lightning.pytorch.callbacks import LearningRateMonitor

    from bioexp.utils import accel, dashboards, fallbacks, run

    run.route_lightning_logs()
    run.validate_options(cfg)
    accel.check_launch(cfg, multirun=run._is_multirun())
    if cfg.get("ckpt_path"):
        run.check_resume_checkpoint(cfg.ckpt_path, cfg.model)
    accel.enable_fast_gpu_math()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    fallbacks.start_recording(out)

    datamodule = instantiate(cfg.data, _convert_="all")
    # Before the model: data-derived dims (num_classes, ...) fill the model config. One rank at a time per node.
    accel.prepare_data_once(datamodule, cfg.data)
    run.fill_dims(cfg.model, datamodule.dims)
    if rank_zero_only.rank == 0:  # DDP ranks relaunched by Lightning/torchrun/SLURM run this too
        OmegaConf.save(cfg, out / "resolved_config.yaml", resolve=True)
        if cfg.get("print_config"):
            run.print_config(cfg, out)

    model = run.build_task(cfg.model)
    if cfg.get("init_from"):  # a new run from a checkpoint's weights; ckpt_path= would resume that run instead
        if cfg.get("ckpt_path"):
            raise BioexpError("give init_from= (new run from a checkpoint's weights) or ckpt_path= (resume), not both")
        model.init_weights_from(cfg.init_from)
    loggers = dashboards.start_loggers(cfg.get("logger"))
    callbacks = run.instantiate_group(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                          plugins=run.trainer_plugins(cfg.trainer), _convert_="all")
    hparams = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(hparams)

    metrics: dict[str, Any] = {}
    if cfg.get("train"):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        metrics.update(run.scalar_metrics(trainer.callback_metrics))
    checkpoint = trainer.checkpoint_callback
    best = checkpoint.best_model_path if checkpoint is not None and checkpoint.best_model_path else None
    if cfg.get("test"):
        # The best checkpoint when this run trained; otherwise the given checkpoint (or current weights).
        test_ckpt = best or (None if cfg.get("train") else cfg.get("ckpt_path"))
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt)
        metrics.update(run.scalar_metrics(trainer.callback_metrics))
        metrics.update(getattr(model, "interval_metrics", {}))  # e.g. test/auroc_ci95: [lo, hi]

    name = cfg.get("optimized_metric")
    value = metrics.get(name) if name else None
    if (name and checkpoint is not None and checkpoint.monitor == name and checkpoint.best_model_score is not None):
        value = float(checkpoint.best_model_score)  # the best epoch, not merely the last one
    summary = {"metrics": metrics, "optimized_metric": {"name": name, "value": value},
               "best_checkpoint": best, "last_checkpoint": getattr(checkpoint, "last_model_path", None) or None,
               "warnings": fallbacks.recorded()}
    if trainer.is_global_zero:
        run.write_json(out / "metrics.json", summary)
        scalars = {k: v for k, v in metrics.items() if not isinstance(v, list)}  # dashboards take scalars only
        dashboards.publish_results(loggers, hparams, scalars, (name, value))
        run.log.info("Run dir: %s (%s = %s)", out, name, value)
    return summary, value


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@report_user_errors
def run_hydra(cfg: DictConfig) -> float | None:
    from bioexp.utils.run import checked_objective, finish_wandb

    try:
        _, value = train(cfg)
    finally:
        finish_wandb()
    return checked_objective(value, cfg.get("optimized_metric"))


@report_user_errors
def main() -> float | None:
    """Entry point: ``hparams_from=<sweep result>`` becomes the sweep's best overrides, then Hydra runs."""
    from bioexp.utils.hparams import expand_argv

    sys.argv = expand_argv(sys.argv)
    return run_hydra()


if __name__ == "__main__":
    main()
