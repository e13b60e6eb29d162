"""Exact resume after SIGKILL for every study's experiment (slow; the default suite has the PTB-XL one).

Each study's experiment as composed (its callbacks, schedules, augmentation, loader workers) on the small
synthetic data of ``make gpu-check``'s CPU runs: one uninterrupted run of 2 epochs × 3 batches, and a run
SIGKILLed in epoch 1 after a mid-epoch ``last.ckpt`` (step 4) and resumed from it. Weights must be equal bit
for bit, and the final validation metrics equal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bioexp.gpu_check import STUDIES, prepare, study_overrides
from tests.conftest import REPO, run_cli

EPOCHS, BATCHES = 2, 3  # the kill lands 2 batches into epoch 1, after the step-4 checkpoint
CHECKPOINT_EVERY, KILL_AT = 4, 5
SMALLER_BATCHES = {"vitaldb_msm": ["data.batch_size=4"]}  # its tiny data make one batch of 16 per epoch


def _args(study: str, root: Path, out: Path, *extra: str) -> list[str]:
    return [*study_overrides(study, root, "cpu"), "trainer=cpu", f"trainer.max_epochs={EPOCHS}", "trainer.min_epochs=0",
            f"++trainer.limit_train_batches={BATCHES}", "++trainer.limit_val_batches=2", "data.num_workers=2",
            f"callbacks.step_checkpoint.every_n_train_steps={CHECKPOINT_EVERY}", "test=false", "logger=csv",
            "++callbacks.rich_progress_bar=null", "print_config=false", f"hydra.run.dir={out}",
            *SMALLER_BATCHES.get(study, []), *extra]


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path: Path, study: str):
    root = tmp_path.resolve()
    assert prepare([study], root, "cpu") == ""
    err = (root / "straight.err").open("w")
    straight = subprocess.Popen([sys.executable, "-m", "bioexp.train", *_args(study, root, root / "a")], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=err)
    killed = run_cli(_args(study, root, root / "k", "+callbacks.killer._target_=tests.killer.KillAtStep",
                           f"+callbacks.killer.step={KILL_AT}"), REPO, timeout=1200)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _last(root / "k")["global_step"] == CHECKPOINT_EVERY  # mid-epoch 1: one batch into it
    resumed = run_cli(_args(study, root, root / "r", f"ckpt_path={root / 'k' / 'checkpoints' / 'last.ckpt'}"), REPO,
                      timeout=1200)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert straight.wait(timeout=1200) == 0, (root / "straight.err").read_text()[-3000:]

    a, r = _last(root / "a"), _last(root / "r")
    assert a["global_step"] == r["global_step"] == EPOCHS * BATCHES
    assert a["state_dict"].keys() == r["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(r["state_dict"][key], value, rtol=0, atol=0, msg=f"{study}: {key}")
    metrics_a = json.loads((root / "a" / "metrics.json").read_text())["metrics"]
    metrics_r = json.loads((root / "r" / "metrics.json").read_text())["metrics"]
    val = {k: v for k, v in metrics_a.items() if k.startswith("val/")}
    assert val and val == {k: metrics_r[k] for k in val}
