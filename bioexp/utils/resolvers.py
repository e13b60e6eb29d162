"""OmegaConf resolvers the configs use; importing this module registers them (cheap: no torch)."""

from __future__ import annotations

import functools
import logging
import netrc
import os

from omegaconf import OmegaConf


def wandb_offline() -> bool:
    """W&B stays offline unless the user configured a key (env, ``wandb login``) or asked for online."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("online", "run"):
        return False
    if mode in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


def launch_dir() -> str:
    """The directory bioexp was started from: Hydra's ``runtime.cwd`` inside a job, else the process's cwd.

    ``${hydra:runtime.cwd}`` cannot be resolved while a sweeper names its sweep dir (no job config exists
    yet), which made every multirun without an explicit ``hydra.sweep.dir`` fail; before any job runs, the
    process's cwd is the same directory.
    """
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.cwd if HydraConfig.initialized() else os.getcwd()


def auto_workers(fallback: int) -> int:
    """``${auto_workers:N}``: loader workers sized from the machine on CUDA (CPUs per GPU - 1, at most 8);
    ``N`` without CUDA, where the loader shares the cores with training (torch is imported only here)."""
    from bioexp.utils.accel import auto_workers as sized

    return sized(fallback=int(fallback))


if not OmegaConf.has_resolver("auto_workers"):
    OmegaConf.register_new_resolver("auto_workers", auto_workers)
if not OmegaConf.has_resolver("launch_dir"):
    OmegaConf.register_new_resolver("launch_dir", launch_dir)
if not OmegaConf.has_resolver("wandb_offline"):
    OmegaConf.register_new_resolver("wandb_offline", wandb_offline)


@functools.cache
def amp_if_gpu(precision: str = "16-mixed", accelerator: str = "auto") -> str:
    """``precision`` when training will run on a CUDA GPU (accelerator ``auto``/``gpu``/``cuda`` and CUDA
    available), else ``32-true`` with one info line: a recipe's "AMP by default on a GPU" as a config value
    (``trainer.precision: ${amp_if_gpu:16-mixed,${trainer.accelerator}}``); fp32 by overriding the key."""
    import torch

    if str(accelerator).lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return str(precision)
    logging.getLogger(__name__).info("No CUDA GPU for accelerator=%s: mixed precision off (32-true)", accelerator)
    return "32-true"


if not OmegaConf.has_resolver("amp_if_gpu"):
    OmegaConf.register_new_resolver("amp_if_gpu", amp_if_gpu)
