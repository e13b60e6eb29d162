"""Every bad input: one line on stderr, exit code 1, no traceback, nothing written over.

The command-line cases run through the real entry point, several per process (``tests.cli_cases``):
each is checked before the data is prepared, so a case costs about a second once torch is imported.
The cache and checkpoint faults are driven in-process (full disk, read-only folder, concurrent and
killed builds, a checkpoint write cut short).
"""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bioexp.callbacks.checkpoint import AtomicCheckpointIO
from bioexp.data import cache as cache_mod
from bioexp.data.cache import cached_stack
from bioexp.errors import BioexpError
from bioexp.utils import fallbacks
from tests.conftest import REPO

DB_COLUMNS = "ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr"
STATEMENTS = ",diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass\nNORM,1,,,NORM,NORM\n"


def _ptbxl_root(path: Path, database: str | bytes) -> Path:
    path.mkdir(parents=True)
    (path / "scp_statements.csv").write_text(STATEMENTS)
    db = path / "ptbxl_database.csv"
    db.write_bytes(database) if isinstance(database, bytes) else db.write_text(database)
    return path


def _cli_table(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(case, arguments, what the one line must say)."""
    text = tmp / "notes.txt"
    text.write_text("not a checkpoint\n")
    plain = tmp / "plain.ckpt"
    torch.save({"state_dict": {}}, plain)
    other = tmp / "bvae.ckpt"
    torch.save({"bioexp": {"task": "bioexp.tasks.bvae.BinaryVAE"}, "state_dict": {}}, other)
    no_fold = _ptbxl_root(tmp / "no_fold", "ecg_id,scp_codes,filename_lr,filename_hr\n1,{'NORM': 100},a,b\n")
    wrong_table = _ptbxl_root(tmp / "wrong_table", STATEMENTS)
    binary = _ptbxl_root(tmp / "binary", bytes(range(256)) * 8)
    return [
        ("missing checkpoint", [f"ckpt_path={tmp / 'nope.ckpt'}"], "checkpoint not found"),
        ("text file as checkpoint", [f"ckpt_path={text}"], "cannot read checkpoint"),
        ("foreign checkpoint", [f"ckpt_path={plain}"], "was not written by bioexp"),
        ("checkpoint of another task", [f"ckpt_path={other}"], "is a checkpoint of bioexp.tasks.bvae.BinaryVAE"),
        ("batch size 0", ["data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
        ("max_epochs=abc under fdr", ["debug=fdr", "trainer.max_epochs=abc"], "trainer.max_epochs must be an integer"),
        ("negative learning rate", ["model.optimizer.lr=-1"], "model.optimizer.lr must be a number > 0"),
        ("negative step checkpoint interval", ["callbacks.step_checkpoint.every_n_train_steps=-5"],
         "callbacks.step_checkpoint.every_n_train_steps must be an integer >= 0, got -5"),
        ("database without strat_fold", [f"data.root={no_fold}"], "lacks required column(s) strat_fold"),
        ("another table as the database", [f"data.root={wrong_table}"], "lacks required column(s) ecg_id, scp_codes"),
        ("binary file as the database", [f"data.root={binary}"], "ptbxl_database.csv"),
    ]


def test_command_line_bad_inputs_each_fail_in_one_line(tmp_path: Path):
    table = _cli_table(tmp_path)
    given = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    common = ["trainer=cpu", "data.synthesize=null", "logger=csv", "print_config=false", "data.num_workers=0"]
    argv: list[str] = []
    for i, (_, args, _) in enumerate(table):
        argv += [*common, *args, f"hydra.run.dir={tmp_path / 'runs' / str(i)}", "--"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "-m", "tests.cli_cases", str(tmp_path / "out.json"), *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(table)
    for (case, _, expected), result in zip(table, results, strict=True):
        lines = result["stderr"].strip().splitlines()
        assert result["rc"] == 1, (case, result)
        assert "Traceback" not in result["stderr"], (case, result["stderr"])
        assert len(lines) == 1 and lines[0].startswith("bioexp: error: "), (case, lines)
        assert expected in lines[0], (case, lines[0])
    for i in range(len(table)):  # failed before anything was trained or written
        assert not list((tmp_path / "runs" / str(i)).glob("**/*.ckpt")) and not (tmp_path / "runs" / str(i) /
                                                                                  "metrics.json").exists()
    assert {p: p.read_bytes() for p in given} == given  # the inputs are untouched


# -- the decode cache -----------------------------------------------------------------------------

def _items(tmp: Path, n: int = 6) -> list[str]:
    paths = []
    for i in range(n):
        np.save(tmp / f"item{i}.npy", np.full((2, 3), i, dtype=np.float32))
        paths.append(str(tmp / f"item{i}.npy"))
    return paths


def _read_logged(log_file: str, item: str) -> np.ndarray:
    with open(log_file, "a") as f:
        f.write(item + "\n")
    import time

    time.sleep(0.05)  # long enough for the other process to arrive while this one builds
    return np.load(item)


def _read_then_die(die_at: str, item: str) -> np.ndarray:
    if item.endswith(die_at):
        os.kill(os.getpid(), signal.SIGKILL)
    return np.load(item)


def _build(cache_dir: str, items: list[str], read) -> str:
    return str(cached_stack(cache_dir, "demo", items, (2, 3), read).path)


def test_full_disk_while_writing_removes_the_partial_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    items = _items(tmp_path)
    real = np.lib.format.open_memmap

    class FullDisk:
        def __init__(self, *args, **kwargs):
            self.array = real(*args, **kwargs)  # the partial file exists ...

        def __setitem__(self, index, value):  # ... and the disk fills up while it is written
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np.lib.format, "open_memmap", FullDisk)
    with pytest.raises(BioexpError, match="no space left .* partial file is removed"):
        cached_stack(tmp_path / "c", "demo", items, (2, 3), np.load)
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_read_only_folder_caches_in_the_user_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture):
    items, ro = _items(tmp_path), tmp_path / "dataset" / ".bioexp_cache"
    ro.mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home_cache"))
    real_access = os.access
    monkeypatch.setattr(cache_mod.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    with caplog.at_level(logging.INFO, logger="bioexp.data.cache"):
        path = cached_stack(ro, "demo", items, (2, 3), np.load).path
    assert path.is_relative_to(tmp_path / "home_cache" / "bioexp") and not list(ro.iterdir())
    assert sum("is not writable; caching in" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_array_equal(np.load(path)[:, 0, 0], np.arange(len(items)))


def test_two_runs_building_the_same_cache_build_it_once(tmp_path: Path):
    items, log_file = _items(tmp_path), tmp_path / "reads.txt"
    ctx = multiprocessing.get_context("fork")
    from functools import partial

    with ctx.Pool(2) as pool:
        paths = pool.starmap(_build, [(str(tmp_path / "c"), items, partial(_read_logged, str(log_file)))] * 2)
    assert paths[0] == paths[1]
    assert sorted(log_file.read_text().split()) == sorted(items)  # each item decoded once, by one of them


def test_a_build_killed_half_way_is_rebuilt_by_the_next_run(tmp_path: Path):
    items = _items(tmp_path)
    from functools import partial

    child = multiprocessing.get_context("fork").Process(
        target=_build, args=(str(tmp_path / "c"), items, partial(_read_then_die, "item3.npy")))
    child.start()
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert any(".tmp" in p.name for p in (tmp_path / "c").iterdir())  # the killed build's partial file
    path = Path(_build(str(tmp_path / "c"), items, np.load))
    np.testing.assert_array_equal(np.load(path)[:, 0, 0], np.arange(len(items)))
    assert not any(".tmp" in p.name for p in (tmp_path / "c").iterdir())


def test_a_reader_bug_is_not_taken_for_an_unreadable_record(tmp_path: Path):
    def buggy(item: str) -> np.ndarray:
        raise KeyError("a bug, not a bad file")

    with pytest.raises(KeyError):
        cached_stack(tmp_path / "c", "demo", _items(tmp_path), (2, 3), buggy)


# -- checkpoints and fallbacks -------------------------------------------------------------------

def test_a_checkpoint_write_cut_short_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def cut_short(obj, f):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # the process is stopped in the middle of the write

    monkeypatch.setattr(torch, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_fallbacks_are_counted_across_worker_processes(tmp_path: Path):
    fallbacks.start_recording(tmp_path)
    fallbacks.warn_fallback("split at random")
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=fallbacks.warn_fallback, args=("window taken anywhere",)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(fallbacks.recorded()) == ["split at random", "window taken anywhere (2 times)"]


def test_a_one_cycle_schedule_shorter_than_its_warm_up_is_one_clear_error(caplog: pytest.LogCaptureFixture):
    """A smoke run of 4 steps under the PTB-XL benchmark's OneCycleLR (pct_start 0.25) would otherwise die in
    torch with a bare ZeroDivisionError."""
    from bioexp.tasks.base import Task

    class _Linear(Task):
        def __init__(self, total_steps: int) -> None:
            super().__init__({"_target_": "torch.optim.AdamW", "lr": 0.01},
                             {"_target_": "torch.optim.lr_scheduler.OneCycleLR", "max_lr": 0.01,
                              "total_steps": total_steps, "pct_start": 0.25, "interval": "step"})
            self.layer = torch.nn.Linear(2, 1)

    with pytest.raises(BioexpError, match=r"cannot run a warm-up of one step \(pct_start 0.25 x total_steps 4"):
        _Linear(4).configure_optimizers()
    with caplog.at_level(logging.WARNING, logger="bioexp.tasks.base"):
        assert _Linear(3).configure_optimizers()["lr_scheduler"]["scheduler"].total_steps == 3  # torch runs it
    assert "warm-up under one step (pct_start 0.25 x total_steps 3)" in caplog.text
    assert _Linear(8).configure_optimizers()["lr_scheduler"]["scheduler"].total_steps == 8
