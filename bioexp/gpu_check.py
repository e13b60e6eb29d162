"""``python -m bioexp.gpu_check`` (``make gpu-check``): every study's short GPU run, one table, non-zero on failure.

Each run is ``python -m bioexp.train`` in its own process (so DDP can relaunch it, and peak memory, compile
caches and crashes stay per run) with small synthetic data written up front, a fixed number of training
steps, two validation batches, no checkpoints and no study callbacks beyond the NaN guard and
:class:`~bioexp.callbacks.timing.StepTiming`, which measures the table's figures. ``--device cpu`` runs the
same machinery on CPU with tiny nets (bf16 autocast only: CPU has no float16 AMP), so it is tested without
a GPU. See docs/gpu.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STUDIES = ("ptbxl_xresnet1d50", "ep_prior", "bvae", "vitaldb_msm", "csi", "cardiac_dreamer")
PRECISIONS = {"amp16": "16-mixed", "bf16": "bf16-mixed"}
NO_CUDA = "no CUDA device: gpu-check needs a GPU"


@dataclass(frozen=True)
class Study:
    """One study's run: its experiment, data overrides (``{root}``: the check's data dir), and tiny CPU nets."""

    experiment: str
    data: tuple[str, ...] = ()
    tiny: tuple[str, ...] = ()
    tiny_data: tuple[str, ...] = ()


PTBXL_DATA = ("data.root={root}/ptbxl", "data.cache_dir={root}/ptbxl-cache")
STUDY_SPECS = {
    "ptbxl_xresnet1d50": Study(
        "ptbxl_xresnet1d50", (*PTBXL_DATA, "data.synthesize.records=600"),
        ("model.net.arch=xresnet1d18", "model.net.stem_widths=[8,8,16]", "model.net.block_widths=[16,16,32,32]",
         "model.net.head_hidden=[16]", "data.batch_size=16"), ("data.synthesize.records=120",)),
    "ep_prior": Study(
        "ep_prior", (*PTBXL_DATA, "data.synthesize.records=600"),
        ("model.encoder.arch=xresnet1d18", "data.batch_size=16"), ("data.synthesize.records=120",)),
    "bvae": Study("bvae", ("data.subset=1000",), ("model/bvae_set=set0",), ("data.subset=200",)),
    "vitaldb_msm": Study(
        "vitaldb_msm", ("data.root={root}/vitaldb/cases", "data.windows_dir={root}/vitaldb/windows",
                        "data.synthesize.cases=8", "data.synthesize.minutes=2.0"),
        ("model.encoder.d_model=32", "model.encoder.num_layers=2", "data.batch_size=16"),
        ("data.synthesize.cases=6", "data.synthesize.minutes=1.0")),
    "csi": Study(
        "csi", ("data.root={root}/csi", "data.cache_dir={root}/csi-cache", "+data.synthesize.size=256",
                "data.synthesize.images=160"),
        # three layers at 32 px: no stride-2 conv sees a 1x1 map (oneDNN's bf16 weight gradient is wrong there)
        ("model/backbone=custom_1", "model.backbone.widths=[4,8,16]", "model.backbone.kernels=[7,5,3]",
         "data.image_size=32", "data.batch_size=8"), ("data.synthesize.images=48", "data.synthesize.size=64")),
    "cardiac_dreamer": Study(
        "cardiac_dreamer", ("data.root={root}/cardiac", "data.synthesize.patients=8", "data.synthesize.transitions=10"),
        ("data.image_size=64", "model.net.d_model=32", "model.net.num_heads=2", "model.net.num_layers=1",
         "model.net.dim_feedforward=64", "model.net.arch=resnet18", "data.batch_size=8"),
        ("data.synthesize.patients=6", "data.synthesize.size=64")),
}


@dataclass
class RunSpec:
    """One row of the table."""

    study: str
    precision: str          # amp16 | bf16
    compile: bool = False
    devices: int = 1        # 2: DDP
    extra: list[str] = field(default_factory=list)
    label: str | None = None  # the table's study column (default: the study)

    @property
    def name(self) -> str:
        return (f"{self.label or self.study}-{self.precision}{'-compile' if self.compile else ''}"
                f"{'-ddp' if self.devices > 1 else ''}")


def study_overrides(study: str, root: Path, device: str) -> list[str]:
    """Data (and, on CPU, tiny-net) overrides of one study, with ``{root}`` filled in."""
    spec = STUDY_SPECS[study]
    items = [*spec.data, *(spec.tiny_data + spec.tiny if device == "cpu" else ())]
    return [f"experiment={spec.experiment}", *(item.format(root=root) for item in items)]


def run_overrides(run: RunSpec, root: Path, device: str, steps: int | None, warmup: int, workers: int,
                  out: Path) -> list[str]:
    """The ``bioexp.train`` command line of one run: ``steps`` training steps and two validation batches per
    epoch, or (``steps=None``) the study's epochs as ``run.extra`` sets them."""
    if device == "cpu":  # DDP on CPU: two spawned processes (what the tests of DDP use)
        trainer = ["trainer=ddp_sim", f"trainer.devices={run.devices}"] if run.devices > 1 else ["trainer=cpu"]
    elif run.devices > 1:
        trainer = ["trainer=ddp", f"trainer.devices={run.devices}"]
    else:
        trainer = ["trainer=gpu"]
    length = ([f"++trainer.max_steps={steps}", "trainer.max_epochs=1000", "++trainer.limit_val_batches=2",
               f"trainer.log_every_n_steps={steps}"] if steps is not None else [])
    return [
        *study_overrides(run.study, root, device), *trainer, f"trainer.precision={PRECISIONS[run.precision]}",
        *length, "trainer.min_epochs=0", "++trainer.num_sanity_val_steps=0", "++trainer.enable_checkpointing=false",
        "++trainer.enable_progress_bar=false", "++trainer.enable_model_summary=false", "callbacks=none",
        "++callbacks.rich_progress_bar=null",  # experiments may set their own bar; no per-step sync from one
        "+callbacks.finite_loss._target_=bioexp.callbacks.guards.FiniteLossGuard",
        "+callbacks.step_timing._target_=bioexp.callbacks.timing.StepTiming",
        f"+callbacks.step_timing.warmup_steps={warmup}", f"+callbacks.step_timing.out={out / 'timing.json'}",
        f"model.compile={str(run.compile).lower()}", f"data.num_workers={workers}", "test=false",
        "optimized_metric=null", "print_config=false", "logger=csv", f"hydra.run.dir={out}",
        f"task_name=gpu_check_{run.name}", *run.extra]


def prepare(studies: list[str], root: Path, device: str) -> str:
    """Write the studies' synthetic data and caches, one after the other (they share a data root), before
    any timed run; returns the first error ("" if none)."""
    for study in studies:
        cmd = [sys.executable, "-m", "bioexp.train", *study_overrides(study, root, device), "train=false",
               "test=false", "optimized_metric=null", "trainer=cpu", "logger=csv", "callbacks=none",
               "print_config=false", f"hydra.run.dir={root / 'prepare' / study}"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=_env())
        if done.returncode != 0:
            return f"{study}: {_last_lines(done.stderr or done.stdout)}"
    return ""


def run_one(run: RunSpec, root: Path, device: str, steps: int | None, warmup: int, workers: int,
            timeout: float) -> dict:
    """One short training run in its own process; returns the table row (``ok`` and the timings)."""
    out = root / "runs" / run.name
    cmd = [sys.executable, "-m", "bioexp.train", *run_overrides(run, root, device, steps, warmup, workers, out)]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired:
        return {"run": run, "ok": False, "error": f"timed out after {timeout:.0f} s", "wall_s": timeout}
    row = {"run": run, "wall_s": time.perf_counter() - start, "log": out}
    timing = out / "timing.json"
    if done.returncode != 0 or not timing.is_file():
        return {**row, "ok": False, "error": _last_lines(done.stderr or done.stdout)}
    result = json.loads(timing.read_text())
    ok = result["measured_steps"] > 0 and result["step_s"] is not None
    return {**row, **result, "ok": ok, "error": "" if ok else "no step was measured"}


def _env() -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1"}


def _last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-n:])[-400:]


def plan(studies: list[str], device: str, compile_modes: list[bool], ddp: bool) -> list[RunSpec]:
    """The runs, most informative first: eager bf16 and amp16, then compiled, then DDP."""
    precisions = ["bf16"] if device == "cpu" else ["bf16", "amp16"]
    runs = [RunSpec(s, p, c) for c in compile_modes for p in precisions for s in studies]
    if ddp:
        runs += [RunSpec(s, "bf16", False, devices=2) for s in studies]
    return runs


def format_table(rows: list[dict]) -> str:
    """The one table: study, precision, compile, devices, samples/s, step time, peak memory, data wait, result."""
    header = ("study", "precision", "compile", "gpus", "samples/s", "step ms", "peak GB", "data wait", "result")
    lines = [header]
    for row in rows:
        run = row["run"]

        def num(key: str, fmt: str, scale: float = 1.0, row: dict = row) -> str:
            value = row.get(key)
            return "-" if value is None else format(value * scale, fmt)

        status = "PASS" if row["ok"] else f"FAIL: {row.get('error', '')}"
        lines.append((run.label or run.study, run.precision, "yes" if run.compile else "no", str(run.devices),
                      num("samples_per_s", ",.0f"), num("step_s", ".1f", 1000), num("peak_mem_gb", ".2f"),
                      num("data_wait_frac", ".0%"), status))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
                     for line in lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bioexp.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: a dry run of the same machinery with tiny nets (bf16 autocast)")
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES))
    parser.add_argument("--steps", type=int, default=None, help="training steps per run (default 30 on GPU, 3 on CPU)")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from timing (default 10; CPU 1)")
    parser.add_argument("--compile", choices=["both", "no", "only"], default="both",
                        help="eager and compiled runs (both), eager only, or compiled only")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU DDP rows")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: sized from the machine)")
    parser.add_argument("--root", type=Path, default=Path("outputs/gpu_check"), help="synthetic data and run dirs")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per run (default 150; CPU 1800)")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the whole check, data included; later runs are not started "
                             "(default 480 on CUDA, none on CPU)")
    parser.add_argument("--ep-prior-epoch", action="store_true",
                        help="also time EP-Prior epochs (bf16) on PTB-XL-size synthetic data (17,418 training records)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    from bioexp.utils.accel import auto_workers

    cpu = args.device == "cpu"
    steps = args.steps or (3 if cpu else 30)
    warmup = args.warmup if args.warmup is not None else min(1 if cpu else 10, steps - 1)
    workers = args.workers if args.workers is not None else (0 if cpu else auto_workers())
    timeout = args.timeout or (1800.0 if cpu else 150.0)
    budget = args.budget if args.budget is not None else (float("inf") if cpu else 480.0)
    root = (args.root / args.device).resolve()  # the CPU dry run's tiny data never stands in for the GPU's
    compile_modes = {"both": [False, True], "no": [False], "only": [True]}[args.compile]
    ddp = not cpu and not args.no_ddp and torch.cuda.device_count() >= 2
    started = time.perf_counter()

    groups: dict[tuple[str, ...], list[str]] = {}  # studies sharing a data root are prepared in turn
    for study in args.studies:
        groups.setdefault(STUDY_SPECS[study].data[:1] or (study,), []).append(study)
    print(f"gpu-check: preparing synthetic data for {len(args.studies)} studies under {root} ...", flush=True)
    with ProcessPoolExecutor(max_workers=min(len(groups), os.cpu_count() or 1)) as pool:
        errors = [e for e in pool.map(prepare, groups.values(), [root] * len(groups), [args.device] * len(groups)) if e]
    if errors:
        print(f"gpu-check: FAILED preparing data: {'; '.join(errors)}", flush=True)
        return 1
    rows = []
    device_name = "cpu" if cpu else torch.cuda.get_device_name(0)
    print(f"gpu-check: data ready in {time.perf_counter() - started:.0f} s; runs on {device_name}, {steps} steps "
          f"({warmup} warm-up), {workers} loader workers", flush=True)
    for run in plan(args.studies, args.device, compile_modes, ddp):
        if time.perf_counter() - started > budget:
            rows.append({"run": run, "ok": False, "error": f"not run: over --budget {budget:.0f} s"})
            continue
        row = run_one(run, root, args.device, steps, warmup, workers, timeout)
        print(f"  {run.name}: {'ok' if row['ok'] else 'FAILED'} ({row.get('wall_s', 0):.0f} s)", flush=True)
        rows.append(row)
    if args.ep_prior_epoch:
        rows.append(ep_prior_epoch(root, workers, timeout=max(timeout, 600.0)))
    print()
    print(format_table(rows))
    print(f"\ngpu-check: {sum(r['ok'] for r in rows)}/{len(rows)} passed in {time.perf_counter() - started:.0f} s "
          f"on {device_name}")
    return 0 if all(r["ok"] for r in rows) else 1


EP_PRIOR_TRAIN_RECORDS = 17_418  # PTB-XL's training folds 1-8


def tile_ptbxl(src: Path, dst: Path, train_records: int = EP_PRIOR_TRAIN_RECORDS) -> Path:
    """A PTB-XL-size database over a small synthetic one: its rows repeated (new ``ecg_id``) until folds 1-8
    hold ``train_records`` rows; folds 9 and 10 get a tenth each. Epoch time depends on the count, not on
    the records being distinct."""
    import pandas as pd

    if (dst / "ptbxl_database.csv").is_file():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    base = pd.read_csv(src / "ptbxl_database.csv")
    holdout = train_records // 8
    total = train_records + 2 * holdout
    rows = base.iloc[[i % len(base) for i in range(total)]].reset_index(drop=True)
    rows["ecg_id"] = range(1, total + 1)
    rows["strat_fold"] = [1 + i % 8 for i in range(train_records)] + [9] * holdout + [10] * holdout
    for name in ("scp_statements.csv", "records100", "ground_truth.csv"):
        if (src / name).exists() and not (dst / name).exists():
            (dst / name).symlink_to(src / name)
    rows.to_csv(dst / "ptbxl_database.csv", index=False)
    return dst


def ep_prior_epoch(root: Path, workers: int, timeout: float, epochs: int = 2) -> dict:
    """EP-Prior (bf16) for ``epochs`` epochs on PTB-XL-size data; prints the last epoch's time and 100x it."""
    tiled = tile_ptbxl(root / "ptbxl", root / "ptbxl-17418")
    run = RunSpec("ep_prior", "bf16", label="ep_prior@17418", extra=[
        f"data.root={tiled}", f"data.cache_dir={root}/ptbxl-17418-cache", "data.synthesize=null",
        "data.decode_workers=8", f"trainer.max_epochs={epochs}"])
    row = run_one(run, root, "cuda", None, 0, workers, timeout)
    if row["ok"]:
        epoch_s = row["epoch_s"][-1]
        print(f"EP-Prior bf16, {row['samples_per_epoch']:,} training samples/epoch: {epoch_s:.1f} s per epoch "
              f"(train + validation); 100 epochs = {100 * epoch_s / 60:.1f} min (goal: <= 3 min)", flush=True)
    return row


if __name__ == "__main__":
    sys.exit(main())
