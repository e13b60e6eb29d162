"""``make bench``: speed targets as ratios measured in one run (never asserted in tests).

1. bioexp's time per training step vs a plain PyTorch loop on the same model and batches (<= 1.05)
2. cached PTB-XL loading vs per-record WFDB decoding (>= 20x)
3. wall time of ``python -m bioexp.train --cfg job`` (< 2 s)
4. beat-window loading (EP-Prior's 1-s beat-centred windows) per dataloader worker process (>= 10,000/s)
5. Cardiac Dreamer frame pairs per second from the uint8 frame memmap, one loader worker (>= 2000)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def cardiac_pairs_per_second(pairs: int = 2000, size: int = 224) -> float:
    """Training items (two frames, augmentation off) per second that one loader worker reads from the cache."""
    import torch

    from bioexp.data.cardiac_us import CardiacUSDataModule
    from bioexp.data.synth.cardiac_us import generate_cardiac_us

    with tempfile.TemporaryDirectory() as tmp:
        root = generate_cardiac_us(Path(tmp) / "cardiac", patients=3, transitions=40, size=size, seed=0)
        dm = CardiacUSDataModule(str(root), image_size=size, num_workers=0, decode_workers=0)
        dm.prepare_data()
        dm.setup()
        dataset = dm.datasets["train"]
        dataset[0]  # opens the memmap, as a worker's first item does
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as in a DataLoader worker
        try:
            start = time.perf_counter()
            for i in range(pairs):
                dataset[i % len(dataset)]
            return pairs / (time.perf_counter() - start)
        finally:
            torch.set_num_threads(threads)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--records", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vitaldb-only", action="store_true", help="only the VitalDB window-building scale figures")
    parser.add_argument("--windows", type=int, default=20000, help="beat windows to time")
    args = parser.parse_args()
    for row in vitaldb_window_scale():
        print("VitalDB windows: {cases} cases x {minutes_per_case} min, {workers} process(es): "
              "{cases_per_min_per_process:.0f} cases/min/process ({seconds:.1f} s wall, {windows} windows), "
              "{cases_per_cpu_min:.0f} cases per CPU-minute, peak RSS "
              "main {rss_main_mb:.0f} MB, worker {rss_worker_mb} MB".format(**row))
    if args.vitaldb_only:
        return
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
    cardiac = cardiac_pairs_per_second()
    rows = [
        ("train step: bioexp / plain PyTorch (xresnet1d50, batch "
         f"{args.batch_size}x12x250, CPU)", f"{step_ratio:.3f}", "<= 1.05", step_ratio <= 1.05,
         f"{statistics.median(ours) * 1e3:.1f} ms vs {statistics.median(plain) * 1e3:.1f} ms"),
        (f"PTB-XL loading: per-record wfdb / memmap cache ({args.records} records)", f"{wfdb_s / cache_s:.0f}x",
         ">= 20x", wfdb_s / cache_s >= 20, f"{wfdb_s:.2f} s vs {cache_s:.3f} s"),
        ("python -m bioexp.train --cfg job", f"{cfg_s:.2f} s", "< 2 s", cfg_s < 2.0, "median of 3"),
        ("beat windows per worker process (1 s, beat-aligned, median baseline)", f"{beats:,.0f}/s", ">= 10,000/s",
         beats >= 10_000, f"{args.windows} windows from {args.records} records"),
        ("Cardiac Dreamer: frame pairs/s per loader worker (224 px, uint8 memmap)", f"{cardiac:.0f}", ">= 2000",
         cardiac >= 2000, "2000 items, no augmentation"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'benchmark':<{width}}  {'value':>8}  {'target':>8}  ok   detail")
    for name, value, target, ok, detail in rows:
        print(f"{name:<{width}}  {value:>8}  {target:>8}  {'yes' if ok else 'NO ':<3}  {detail}")


if __name__ == "__main__":
    main()
