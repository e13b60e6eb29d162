"""Shared fixtures: a small synthetic PTB-XL, Hydra composition, tiny-network overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from bioexp.train import CONF_DIR

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"

# A network small enough that a CPU epoch over ~200 records takes about a second.
TINY_NET = ["model.net.arch=xresnet1d18", "model.net.stem_widths=[8,8,16]", "model.net.block_widths=[16,16,32,32]",
            "model.net.head_hidden=[16]"]


def shared_data(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not (path.exists() or path.with_suffix(".hea").exists()):  # WFDB records are named without extension
        pytest.fail(f"real sample data missing: {path} (../shared/data sits beside the checkout)")
    return path


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 synthetic PTB-XL records (100 Hz), written once per test session; treat as read-only."""
    from bioexp.data.synth import generate_ptbxl

    return generate_ptbxl(tmp_path_factory.mktemp("synth") / "ptbxl", records=400, seed=0)


def data_overrides(root: Path, cache_dir: Path) -> list[str]:
    return [f"data.root={root}", f"data.cache_dir={cache_dir}", "data.num_workers=0", "data.batch_size=32",
            "data.synthesize=null", "print_config=false"]


def compose_cfg(overrides: list[str], out_dir: Path, config_name: str = "train") -> DictConfig:
    """Compose like ``python -m bioexp.train`` would, with the run dir at ``out_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir)
        del cfg["hydra"]
    return cfg


def run_cli(args: list[str], cwd: Path, timeout: float = 300, module: str = "bioexp.train",
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run an entry point as a user would, in ``cwd`` (so outputs/ and multirun/ land there)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)
