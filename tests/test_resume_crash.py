"""Exact resume after SIGKILL: a real training process killed mid-epoch, resumed, equals an uninterrupted run.

The chain covers both kinds of ``last.ckpt`` a crash leaves behind: the end-of-epoch one (the case that
diverged before: with loader workers the resumed epoch's first loader started on the wrong epoch's
order) and a mid-epoch one from ``callbacks.step_checkpoint`` (resumes at the next batch). The recipe
has a step-interval OneCycle schedule, dropout, random crops and two loader workers.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bioexp.callbacks.seeding import EpochSeed
from bioexp.data.sampling import EpochSampler
from tests.conftest import REPO, TINY_NET, run_cli

STEPS_PER_EPOCH = 9  # 400 synthetic records: ~300 in folds 1-8, batches of 32, last partial one dropped


def _args(root: Path, cache: Path, out: Path, epochs: int, *extra: str) -> list[str]:
    return ["experiment=ptbxl_xresnet1d50", "trainer=cpu", f"trainer.max_epochs={epochs}", f"data.root={root}",
            f"data.cache_dir={cache}", "data.num_workers=2", "data.batch_size=32", "data.synthesize=null", *TINY_NET,
            "+trainer.limit_val_batches=1", "test=false", "logger=csv", "callbacks.rich_progress_bar=null",
            "print_config=false", f"hydra.run.dir={out}", *extra]


def _killed_at(step: int) -> list[str]:
    return ["+callbacks.killer._target_=tests.killer.KillAtStep", f"+callbacks.killer.step={step}"]


def _weights(run: Path) -> tuple[int, dict[str, torch.Tensor]]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["global_step"], ckpt["state_dict"]


def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_weights(tmp_path: Path, synth_root: Path):
    cache, epochs, every = tmp_path / "cache", 2, ["callbacks.step_checkpoint.every_n_train_steps=4"]
    cmd = [sys.executable, "-m", "bioexp.train", *_args(synth_root, cache, tmp_path / "a", epochs)]
    err = (tmp_path / "a.err").open("w")
    straight = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
    # 1: killed in epoch 1 (1 batch in); its last.ckpt is the end of epoch 0.
    k1 = run_cli(_args(synth_root, cache, tmp_path / "k1", epochs, *_killed_at(STEPS_PER_EPOCH + 1)), REPO,
                 timeout=900)
    assert k1.returncode == -signal.SIGKILL, k1.stderr[-2000:]
    assert _weights(tmp_path / "k1")[0] == STEPS_PER_EPOCH
    # 2: resumed from it, checkpointing every 4 steps, killed again later in epoch 1; last.ckpt is mid-epoch
    # (step 12: 3 batches into epoch 1).
    k2 = run_cli(_args(synth_root, cache, tmp_path / "k2", epochs, *every, *_killed_at(STEPS_PER_EPOCH + 5),
                       f"ckpt_path={tmp_path / 'k1' / 'checkpoints' / 'last.ckpt'}"), REPO, timeout=900)
    assert k2.returncode == -signal.SIGKILL, k2.stderr[-2000:]
    assert _weights(tmp_path / "k2")[0] == 12
    # 3: resumed from the mid-epoch checkpoint to the end.
    r = run_cli(_args(synth_root, cache, tmp_path / "r", epochs, *every,
                      f"ckpt_path={tmp_path / 'k2' / 'checkpoints' / 'last.ckpt'}"), REPO, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert straight.wait(timeout=900) == 0, (tmp_path / "a.err").read_text()[-3000:]

    (step_a, a), (step_r, b) = _weights(tmp_path / "a"), _weights(tmp_path / "r")
    assert step_a == step_r == epochs * STEPS_PER_EPOCH
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=0, msg=key)
    metrics_a = json.loads((tmp_path / "a" / "metrics.json").read_text())["metrics"]
    metrics_r = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    assert metrics_r["val/auroc"] == metrics_a["val/auroc"] and metrics_r["val/loss"] == metrics_a["val/loss"]


def test_sampler_skips_the_trained_part_of_its_first_pass_only():
    full = list(EpochSampler(10, seed=1, epoch=3))
    resumed = EpochSampler(10, seed=1, epoch=3, start=4)
    assert list(resumed) == full[4:] and list(resumed) == full  # the next pass is a whole epoch again
    moved_on = EpochSampler(10, seed=1, epoch=2, start=4)
    moved_on.set_epoch(3)  # another epoch than the resumed one: nothing to skip
    assert list(moved_on) == full


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path):
    saver = EpochSeed(seed=0)
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    torch.save({"state": saver.state_dict()}, tmp_path / "s.ckpt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    loader = EpochSeed(seed=0)
    loader.load_state_dict(torch.load(tmp_path / "s.ckpt", weights_only=True)["state"])
    loader.on_train_start(None, None)  # type: ignore[arg-type]
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
