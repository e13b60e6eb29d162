"""``python -m bioexp.evaluate ckpt_path=...``: test a checkpoint and write ``metrics.json``.

The task class and, unless ``data=``/``experiment=`` say otherwise, the datamodule and its
settings come from the checkpoint itself, so a run dir's checkpoint is all that is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

import bioexp.utils.resolvers  # noqa: F401
from bioexp.train import CONF_DIR
from bioexp.utils.run import load_checkpoint_meta, report_user_errors  # noqa: F401 (re-exported)


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    from hydra.utils import get_class, instantiate

    from bioexp.errors import BioexpError
    from bioexp.tasks.base import task_class
    from bioexp.utils import run

    run.route_lightning_logs()
    if not cfg.get("ckpt_path"):
        raise BioexpError("ckpt_path is required: python -m bioexp.evaluate ckpt_path=<run dir>/checkpoints/last.ckpt")
    meta = load_checkpoint_meta(cfg.ckpt_path)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = task_class(meta["provenance"]["task"]).load_from_checkpoint(cfg.ckpt_path, map_location="cpu",
                                                                        weights_only=True)
    data_cfg = cfg.get("data")
    if data_cfg and "_target_" in data_cfg:  # data=<group option>: a complete datamodule config
        datamodule = instantiate(data_cfg, _convert_="all")
    elif meta["provenance"].get("datamodule") and meta["datamodule_hparams"] is not None:
        # The checkpoint's own datamodule; settings an experiment= brings override its saved ones.
        overrides = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg else {}
        datamodule = get_class(meta["provenance"]["datamodule"])(**{**meta["datamodule_hparams"], **overrides})
    else:
        raise BioexpError("the checkpoint does not record its data; pass data=... or experiment=...")
    datamodule.prepare_data()
    OmegaConf.save(cfg, out / "resolved_config.yaml", resolve=True)
    loggers = run.instantiate_group(cfg.get("logger"))
    callbacks = run.instantiate_group(cfg.get("callbacks"))
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, _convert_="all")
    trainer.test(model, datamodule=datamodule)
    summary = {"metrics": run.scalar_metrics(trainer.callback_metrics), "checkpoint": str(cfg.ckpt_path)}
    if trainer.is_global_zero:
        run.write_json(out / "metrics.json", summary)
    return summary


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from bioexp.utils.run import finish_wandb

    try:
        evaluate(cfg)
    finally:
        finish_wandb()


if __name__ == "__main__":
    main()
