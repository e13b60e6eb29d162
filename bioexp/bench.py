"""``make bench``: speed targets as ratios measured in one run (never asserted in tests).

1. bioexp's time per training step vs a plain PyTorch loop on the same model and batches (<= 1.05)
2. cached PTB-XL loading vs per-record WFDB decoding (>= 20x)
3. wall time of ``python -m bioexp.train --cfg job`` (< 2 s)
4. beat-window loading (EP-Prior's 1-s beat-centred windows) per dataloader worker process (>= 10,000/s)

Then, per study of ``make gpu-check`` (its data settings: real image sizes and window lengths, few synthetic
records), the training items per second that one loader worker delivers (``__getitem__`` for the sampler's
keys plus collation, in one process and one thread; Cardiac Dreamer's target: >= 2000 frame pairs/s) and
how many workers one H100 needs to keep up. No GPU has measured the step rates yet, so they are estimated
from FLOPs: assumed MFU 0.3 (an assumption, modest for these small convnets/transformers) x 989e12 FLOP/s
(H100 SXM, bf16 dense peak; fp16 is the same) / the FLOPs of one training step per sample, counted by
``FlopCounterMode`` (matmuls, convolutions, attention; forward + backward of the study's default-size
network on CPU at batch 2; elementwise ops and the optimiser are not counted). Steps estimated under 1 ms
(small networks such as bvae's MLP) are bound by per-step overhead, not FLOPs: the table flags them, as
their estimate is far too high. ``make gpu-check``'s samples/s are the measured rates to compare with.

``--only vitaldb|targets|loaders`` runs one part: VitalDB window building at scale, the target rows, the
per-study loader table.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _batches(n: int, batch_size: int, length: int, classes: int = 5) -> list[tuple]:
    import torch

    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch_size, 12, length, generator=g),
             (torch.rand(batch_size, classes, generator=g) > 0.7).float()) for _ in range(n)]


NET = {"_target_": "bioexp.nets.xresnet1d.XResNet1d", "arch": "xresnet1d50", "num_classes": 5}
OPTIMIZER = {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 1e-2}


def plain_step_time(batches: list[tuple], warmup: int) -> float:
    """Seconds per step of a hand-written loop: forward, BCE, backward, AdamW step."""
    import torch

    from bioexp.tasks.base import build

    torch.manual_seed(0)
    net = build(NET).train()
    opt = build(OPTIMIZER, params=net.parameters())
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        loss.item()  # the same host sync Lightning's logging does
    return (time.perf_counter() - start) / (len(batches) - warmup)


def bioexp_step_time(batches: list[tuple], warmup: int) -> float:
    """Seconds per step through bioexp's task, default callbacks and Lightning's loop."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from bioexp.callbacks.guards import FiniteLossGuard
    from bioexp.callbacks.seeding import EpochSeed
    from bioexp.tasks.classifier import MultiLabelClassifier

    class StepClock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == warmup:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module) -> None:
            self.per_step = (time.perf_counter() - self.start) / (len(batches) - warmup)

    torch.manual_seed(0)
    task = MultiLabelClassifier(net=NET, num_classes=5, optimizer=OPTIMIZER)
    clock = StepClock()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[FiniteLossGuard(), EpochSeed(0), clock])
    loader = DataLoader(batches, batch_size=None)  # the very same tensors, already batched
    trainer.fit(task, train_dataloaders=loader)
    return clock.per_step


def loading_speedup(records: int) -> tuple[float, float]:
    """Seconds to load ``records`` PTB-XL records per record with wfdb, and from the memmap cache."""
    from bioexp.data.ecg_io import read_leads
    from bioexp.data.ptbxl import PTBXLDataModule
    from bioexp.data.synth import generate_ptbxl

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_ptbxl(Path(tmp) / "ptbxl", records=records, seed=0)
        dm = PTBXLDataModule(str(root), decode_workers=0)
        dm.prepare_data()
        files = dm._database()["filename_lr"].tolist()
        start = time.perf_counter()
        decoded = [read_leads(root / f)[0] for f in files]
        wfdb_s = time.perf_counter() - start
        dm.setup()
        cache = dm._signals_cache().open()
        start = time.perf_counter()
        cached = [np.array(cache[i]) for i in range(len(files))]
        cache_s = time.perf_counter() - start
        assert np.allclose(decoded[-1], cached[-1])
    return wfdb_s, cache_s


def beat_window_rate(records: int, windows: int) -> float:
    """Beat-centred 1-s windows per second that one process (one dataloader worker) cuts from the cache.

    The EP-Prior beat recipe's data settings (beat-aligned crops, per-window median baseline), random
    training windows keyed like :class:`~bioexp.data.sampling.EpochSampler`'s; no collation or model.
    """
    from bioexp.data.ptbxl import PTBXLDataModule
    from bioexp.data.synth import generate_ptbxl

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_ptbxl(Path(tmp) / "ptbxl", records=records, seed=0)
        dm = PTBXLDataModule(str(root), decode_workers=0, crop_seconds=1.0, crop_align="beat", eval_crop=True,
                             window_baseline="median")
        dm.prepare_data()
        dm.setup()
        ds = dm.datasets["train"]
        keys = [(i % len(ds), i) for i in range(windows)]
        ds[0]  # opens the memmap
        start = time.perf_counter()
        for key in keys:
            ds[key]
        return windows / (time.perf_counter() - start)


def cfg_job_time(repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bioexp.train", "--cfg", "job"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _vitaldb_build(root: str, workers: int, out: str) -> None:
    """Child process of :func:`vitaldb_window_scale`: build and merge every case's windows, print the figures."""
    import json
    import resource

    from bioexp.data import vitaldb_windows as v  # not bioexp.data.vitaldb: torch would dominate the RSS

    cases = sorted(v.case_files(Path(root)))
    start = time.perf_counter()
    v.build_case_shards(Path(root), cases, ["PPG", "ECG"], v.CHANNELS, v.WINDOWS, Path(out) / "shards", workers)
    summary = v.merge_shards(Path(out) / "shards", cases, ["PPG", "ECG"], 1250, Path(out) / "train_windows", "bench")
    seconds = time.perf_counter() - start
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # a shared machine's wall time says little; CPU time does
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "windows": summary["windows"],
                      "rss_main_mb": usage[0].ru_maxrss / 1024,
                      "rss_worker_mb": usage[1].ru_maxrss / 1024 if workers > 1 else None}))


def vitaldb_window_scale(sizes: tuple[int, ...] = (100, 500), workers: tuple[int, ...] = (1, 2),
                         minutes: float = 0.25) -> list[dict]:
    """VitalDB window building at scale: cases per minute per process and peak RSS (main process, largest
    worker) for synthetic cohorts of each size, built by 1 and 2 processes (streamed shards + merge)."""
    import json

    from bioexp.data.synth.vitaldb import generate_vitaldb

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            root = generate_vitaldb(Path(tmp) / f"cases{size}", cases=size, seed=0, minutes=minutes)
            for n in workers:
                out = f"{tmp}/w{size}_{n}"
                code = f"from bioexp.bench import _vitaldb_build; _vitaldb_build({str(root)!r}, {n}, {out!r})"
                done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"cases": size, "workers": n, "minutes_per_case": minutes, **figures,
                             "cases_per_min_per_process": size / figures["seconds"] * 60 / n,
                             "cases_per_cpu_min": size / figures["cpu_seconds"] * 60})
    return rows


H100_BF16_DENSE_FLOPS = 989e12  # H100 SXM, bf16 (and fp16) tensor cores, dense (no 2:4 sparsity)
ASSUMED_MFU = 0.3                # an assumption: these are small convnets/transformers, not tuned LLM kernels
FLOP_BATCH = 2                   # samples per counted training step (FLOPs scale linearly with the batch)
CARDIAC_PAIRS_TARGET = 2000      # frame pairs/s per worker (the per-frame PNG decoding it replaced gave 460)
GPU_RATE_SOURCE = "FLOP estimate"


@dataclass(frozen=True)
class LoaderRow:
    """One study's row of the loader table."""

    study: str
    batch_size: int
    items_per_s: float       # one loader worker: __getitem__ + collation, one process, one thread
    flops_per_sample: float  # one training step, forward + backward
    gpu_samples_per_s: float
    workers: int


def train_step_flops(step: Callable[[], Any]) -> int:
    """FLOPs of ``step()`` (returning a loss) and its backward pass, as ``FlopCounterMode`` counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step().backward()
    return counter.get_total_flops()


def gpu_samples_per_s(flops_per_sample: float, mfu: float = ASSUMED_MFU,
                      peak: float = H100_BF16_DENSE_FLOPS) -> float:
    """Training samples per second one GPU would take at ``mfu`` of its ``peak`` FLOP/s."""
    return mfu * peak / flops_per_sample


def workers_needed(gpu_rate: float, worker_rate: float) -> int:
    """Loader workers whose combined items/s reach the GPU's samples/s."""
    return math.ceil(gpu_rate / worker_rate)


def _batch_items(batch: Any) -> int:
    """Samples in a collated batch: the leading dim of its first tensor (batches are tuples or dicts)."""
    import torch
    from torch.utils._pytree import tree_leaves

    return next(leaf for leaf in tree_leaves(batch) if isinstance(leaf, torch.Tensor)).shape[0]


def loader_items_per_s(loader: Iterable, min_seconds: float) -> float:
    """Items per second from an in-process (``num_workers=0``) loader with one torch thread, as in a
    DataLoader worker: the sampler's keys, ``__getitem__`` and collation. Loops over epochs as needed; the
    first batch (opening memmaps, as a worker's first does) is not timed."""
    import torch

    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        next(batches)
        items, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds or not items:
            items += _batch_items(next(batches))
        return items / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def _compose(overrides: list[str]) -> Any:
    """The config ``python -m bioexp.train`` would compose (``${hydra:...}`` resolvable)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import bioexp.utils.resolvers  # noqa: F401
    from bioexp.train import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def study_loader_row(study: str, root: Path, min_seconds: float) -> LoaderRow:
    """Build the study's datamodule and task as ``bioexp.train`` does (the GPU run's full-size data settings
    and network, synthetic data written under ``root`` on first use), time its training loader, count its
    training-step FLOPs."""
    from hydra.utils import instantiate

    from bioexp.gpu_check import study_overrides
    from bioexp.utils.run import build_task, fill_dims

    cfg = _compose([*study_overrides(study, root, "cuda"), "data.num_workers=0"])  # "cuda": no tiny nets or data
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    fill_dims(cfg.model, datamodule.dims)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    items_per_s = loader_items_per_s(loader, min_seconds)
    keys = list(itertools.islice(iter(loader.sampler), FLOP_BATCH))
    batch = loader.collate_fn([loader.dataset[key] for key in keys])
    task = build_task(cfg.model).train()
    with warnings.catch_warnings():  # self.log() without a Trainer says so on every call
        warnings.filterwarnings("ignore", message=".*self.log.*")
        flops = train_step_flops(lambda: task.training_step(batch, 0)) / FLOP_BATCH
    gpu_rate = gpu_samples_per_s(flops)
    return LoaderRow(study, loader.batch_size, items_per_s, flops, gpu_rate, workers_needed(gpu_rate, items_per_s))


def _note(row: LoaderRow, step_ms: float) -> str:
    """Cardiac Dreamer's per-worker target, or a warning that the FLOP estimate cannot hold."""
    if row.study == "cardiac_dreamer":
        return f"target >= {CARDIAC_PAIRS_TARGET}/s: {'yes' if row.items_per_s >= CARDIAC_PAIRS_TARGET else 'NO'}"
    return "overhead-bound: estimate far too high" if step_ms < 1.0 else ""


def format_loader_table(rows: list[LoaderRow]) -> str:
    """The per-study table, then the assumptions behind its GPU rates."""
    header = ("study", "batch", "items/s/worker", "GFLOP/sample", "H100 samples/s", "H100 step ms", "workers",
              "GPU rate source", "note")
    lines = [header]
    for r in rows:
        step_ms = r.batch_size / r.gpu_samples_per_s * 1e3
        lines.append((r.study, str(r.batch_size), f"{r.items_per_s:,.0f}", f"{r.flops_per_sample / 1e9:.3g}",
                      f"{r.gpu_samples_per_s:,.0f}", f"{step_ms:.3g}", f"{r.workers:,}", GPU_RATE_SOURCE,
                      _note(r, step_ms)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join([*table,
        f"H100 samples/s = {ASSUMED_MFU} (assumed MFU) x {H100_BF16_DENSE_FLOPS / 1e12:.0f}e12 FLOP/s (H100 SXM "
        "bf16 dense peak) / FLOPs per sample of one training step (FlopCounterMode: matmul/conv/attention, "
        "forward + backward, "
        f"default-size net, batch {FLOP_BATCH} on CPU); workers = ceil(H100 samples/s / items/s/worker).",
        "Not measured on a GPU: compare with make gpu-check's samples/s. A step estimated under 1 ms is "
        "overhead-bound (kernel launches, Python), so its estimate is far too high.",
    ])


def loader_table(studies: Iterable[str], min_seconds: float, root: Path | None) -> list[LoaderRow]:
    """One :class:`LoaderRow` per study; synthetic data in ``root`` (kept) or a temporary directory."""
    with tempfile.TemporaryDirectory() as tmp:
        base = (root or Path(tmp)).resolve()
        return [study_loader_row(study, base, min_seconds) for study in studies]


def print_vitaldb_scale() -> None:
    for row in vitaldb_window_scale():
        print("VitalDB windows: {cases} cases x {minutes_per_case} min, {workers} process(es): "
              "{cases_per_min_per_process:.0f} cases/min/process ({seconds:.1f} s wall, {windows} windows), "
              "{cases_per_cpu_min:.0f} cases per CPU-minute, peak RSS "
              "main {rss_main_mb:.0f} MB, worker {rss_worker_mb} MB".format(**row))


def print_targets(args: argparse.Namespace) -> None:
    warmup = 5
    batches = _batches(args.steps + warmup, args.batch_size, 250)
    plain, ours = [], []
    for _ in range(args.repeats):  # interleaved, so machine noise hits both sides alike
        plain.append(plain_step_time(batches, warmup))
        ours.append(bioexp_step_time(batches, warmup))
    step_ratio = statistics.median(ours) / statistics.median(plain)
    wfdb_s, cache_s = loading_speedup(args.records)
    cfg_s = cfg_job_time()
    beats = beat_window_rate(args.records, args.windows)
    rows = [
        ("train step: bioexp / plain PyTorch (xresnet1d50, batch "
         f"{args.batch_size}x12x250, CPU)", f"{step_ratio:.3f}", "<= 1.05", step_ratio <= 1.05,
         f"{statistics.median(ours) * 1e3:.1f} ms vs {statistics.median(plain) * 1e3:.1f} ms"),
        (f"PTB-XL loading: per-record wfdb / memmap cache ({args.records} records)", f"{wfdb_s / cache_s:.0f}x",
         ">= 20x", wfdb_s / cache_s >= 20, f"{wfdb_s:.2f} s vs {cache_s:.3f} s"),
        ("python -m bioexp.train --cfg job", f"{cfg_s:.2f} s", "< 2 s", cfg_s < 2.0, "median of 3"),
        ("beat windows per worker process (1 s, beat-aligned, median baseline)", f"{beats:,.0f}/s", ">= 10,000/s",
         beats >= 10_000, f"{args.windows} windows from {args.records} records"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>8}  {'target':>8}  ok   detail")
    for name, value, target, ok, detail in rows:
        print(f"{name:<{width}}  {value:>8}  {target:>8}  {'yes' if ok else 'NO ':<3}  {detail}")


def main(argv: list[str] | None = None) -> None:
    from bioexp.gpu_check import STUDIES

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["vitaldb", "targets", "loaders"], help="run one part (default: all)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=20000, help="beat windows to time")
    parser.add_argument("--studies", nargs="+", choices=STUDIES, default=list(STUDIES), help="loader table rows")
    parser.add_argument("--loader-seconds", type=float, default=5.0, help="timed loading per study")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="keep the loader table's synthetic data here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.only in (None, "vitaldb"):
        print_vitaldb_scale()
    if args.only in (None, "targets"):
        print_targets(args)
    if args.only in (None, "loaders"):
        print()
        print(format_loader_table(loader_table(args.studies, args.loader_seconds, args.data_root)))


if __name__ == "__main__":
    main()
