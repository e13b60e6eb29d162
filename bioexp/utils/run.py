"""Runner plumbing shared by ``bioexp.train`` and ``bioexp.evaluate``."""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf, open_dict

from bioexp.errors import BioexpError, NonFiniteError

log = logging.getLogger("bioexp")
T = TypeVar("T")


def route_lightning_logs() -> None:
    """Drop Lightning's own console handlers: Hydra's handlers already print (and file) its records."""
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    # Lightning 2.6 + torch 2.14 internal deprecation, not actionable by users.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each ``{_target_: ...}`` entry of a config group (callbacks, loggers); null ones are off."""
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(c, _convert_="all") for c in group.values() if c is not None and "_target_" in c]


def trainer_plugins(trainer_cfg: DictConfig) -> list[Any]:
    """The trainer's configured plugins, plus atomic checkpoint writes unless a CheckpointIO is configured."""
    from lightning.fabric.plugins import CheckpointIO

    from bioexp.callbacks.checkpoint import AtomicCheckpointIO

    plugins = instantiate_group({str(i): p for i, p in enumerate(trainer_cfg.get("plugins") or [])})
    return plugins if any(isinstance(p, CheckpointIO) for p in plugins) else [*plugins, AtomicCheckpointIO()]


def fill_dims(model_cfg: DictConfig, dims: Mapping[str, Any]) -> None:
    """Fill the model config's ``???`` keys that the data knows (``num_classes``, ``in_channels``, ...)."""
    with open_dict(model_cfg):
        for key, value in dims.items():
            if key in model_cfg.keys() and OmegaConf.is_missing(model_cfg, key):  # noqa: SIM118 (`in` skips ???)
                model_cfg[key] = value
    missing = [k for k in model_cfg.keys() if OmegaConf.is_missing(model_cfg, k)]  # noqa: SIM118
    if missing:
        raise BioexpError(f"model config needs {missing} but the data does not provide them; set model.<key>=...")


def build_task(model_cfg: DictConfig) -> Any:
    """The task gets its sub-configs (net, optimizer, ...) as plain dicts and builds them itself."""
    from hydra.utils import get_class

    config = OmegaConf.to_container(model_cfg, resolve=True)
    target = get_class(config.pop("_target_"))
    accel = {key: config.pop(key) for key in ("compile", "channels_last") if key in config}  # run-time only
    task = target(**config)
    if accel:
        task.set_accel(**accel)
    return task


def print_config(cfg: DictConfig, save_dir: str | Path | None = None) -> None:
    """Print the resolved config as a tree (rich) and save it as ``config_tree.log`` in the run dir."""
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    for key, value in cfg.items():
        body = OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        tree.add(str(key), style="bold").add(rich.syntax.Syntax(body, "yaml"))
    rich.print(tree)
    if save_dir is not None:
        with open(Path(save_dir) / "config_tree.log", "w") as f:
            rich.print(tree, file=f)


def scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(metrics.items()) if getattr(v, "numel", lambda: 1)() == 1}


def write_json(path: str | Path, payload: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def checked_objective(value: float | None, name: str | None) -> float | None:
    """The value returned to a sweeper: never NaN/inf (it would crash the Optuna sweep)."""
    if name is None:
        return None
    if value is None:
        raise BioexpError(f"optimized_metric {name!r} was never logged; check its name (e.g. val/loss)")
    if not math.isfinite(value):
        raise NonFiniteError(f"optimized_metric {name} is {value}; this trial counts as failed")
    return value


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _user_error(exc: BaseException) -> BioexpError | None:
    """The user-facing error behind ``exc`` (Hydra wraps errors raised in constructors)."""
    from hydra.errors import InstantiationException

    seen = exc
    while seen is not None:
        if isinstance(seen, BioexpError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(exc, InstantiationException):
        return BioexpError(" ".join(str(exc).split()))
    return None


def report_user_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Entry-point wrapper: a user error becomes one line on stderr and exit code 1.

    In a multirun the error is re-raised instead, so the sweeper records a failed trial and
    goes on (a ``SystemExit`` would end the whole sweep). Bugs keep their traceback.
    """

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            user = _user_error(exc)
            if user is None:
                raise
            if logging.getLogger().handlers:  # Hydra's job log; without handlers logging would echo to stderr
                log.error("%s", user)
            if _is_multirun():
                raise user from None
            print(f"bioexp: error: {user}", file=sys.stderr)
            sys.exit(1)

    return wrapper


def parse_options(defaults: dict[str, Any], argv: list[str] | None = None) -> DictConfig:
    """``key=value`` arguments of the small entry points (sample, compare) over their ``defaults``."""
    from omegaconf.errors import OmegaConfBaseException

    given = OmegaConf.from_dotlist(sys.argv[1:] if argv is None else argv)
    unknown = set(given) - set(defaults)
    if unknown:
        raise BioexpError(f"unknown option(s) {sorted(unknown)}; options: {', '.join(defaults)}")
    try:
        return OmegaConf.merge(defaults, given)
    except OmegaConfBaseException as exc:
        raise BioexpError(f"bad option value: {' '.join(str(exc).split()[:12])}") from None


# Numeric options checked before anything runs: (kind, smallest allowed value). Null means "not set".
NUMERIC_OPTIONS: dict[str, tuple[type, float]] = {
    "seed": (int, 0), "data.batch_size": (int, 1), "data.num_workers": (int, 0),
    "trainer.max_epochs": (int, -1), "trainer.min_epochs": (int, 0), "trainer.max_steps": (int, -1),
    "trainer.accumulate_grad_batches": (int, 1), "trainer.check_val_every_n_epoch": (int, 1),
    "trainer.log_every_n_steps": (int, 1), "model.optimizer.lr": (float, 0.0),
    "callbacks.step_checkpoint.every_n_train_steps": (int, 0),
}


def validate_options(cfg: DictConfig) -> None:
    """Types and ranges of :data:`NUMERIC_OPTIONS`, checked at once: a typo costs one line, not a run.

    (Without this, a value Lightning never reads, such as ``trainer.max_epochs=abc`` under
    ``debug=fdr``, passed unnoticed: the config has no schema and ``fast_dev_run`` ignores it.)
    """
    for key, (kind, low) in NUMERIC_OPTIONS.items():
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        ok_type = isinstance(value, int if kind is int else (int, float)) and not isinstance(value, bool)
        if not ok_type or value < low or (kind is float and value == low):
            what = "an integer" if kind is int else "a number"
            bound = f">= {low:g}" if kind is int else f"> {low:g}"
            raise BioexpError(f"{key} must be {what} {bound}, got {value!r}")


def load_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The checkpoint's bioexp provenance and datamodule settings (safe ``weights_only`` load)."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise BioexpError(f"checkpoint not found: {path} (pass ckpt_path=<run dir>/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise BioexpError(f"cannot read checkpoint {path}: {' '.join(str(exc).split())[:300]}") from exc
    if not isinstance(ckpt, dict) or "bioexp" not in ckpt:
        raise BioexpError(f"{path} was not written by bioexp (no task provenance); load it with its own code")
    return {"provenance": ckpt["bioexp"], "datamodule_hparams": ckpt.get("datamodule_hyper_parameters")}


def check_resume_checkpoint(path: str | Path, model_cfg: DictConfig) -> None:
    """``ckpt_path`` must be a readable bioexp checkpoint of the task this run trains (checked before the data)."""
    from hydra.utils import get_class

    task = load_checkpoint_meta(path)["provenance"]["task"]
    if get_class(task) is not get_class(model_cfg._target_):
        raise BioexpError(f"{path} is a checkpoint of {task}, but this run trains {model_cfg._target_}; "
                          "resume with a checkpoint of the same experiment")


def finish_wandb() -> None:
    """End the W&B run so the next multirun job gets its own."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
