"""make gpu-check: the no-CUDA answer, every study's run config, the timing callback, the table, and CPU dry runs
of the same machinery (bf16 autocast) for every study."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from torch.utils.data import DataLoader, Dataset

from bioexp.callbacks.timing import StepTiming
from bioexp.gpu_check import STUDIES, RunSpec, format_table, main, run_overrides
from bioexp.train import CONF_DIR

REPO = Path(__file__).resolve().parent.parent


def test_without_cuda_it_says_so_in_one_line_and_exits_0(capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([]) == 0
    assert capsys.readouterr().out == "no CUDA device: gpu-check needs a GPU\n"
    assert re.search(r"^gpu-check: \$\(STAMP\)\n\t@\$\(PY\) -m bioexp.gpu_check", (REPO / "Makefile").read_text(), re.M)


def _compose(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        return compose("train", overrides=[o for o in overrides if not o.startswith("hydra.")])


@pytest.mark.parametrize("study", STUDIES)
def test_each_studys_check_run_composes_as_planned(tmp_path, study):
    gpu = _compose(run_overrides(RunSpec(study, "amp16", compile=True), tmp_path, "cuda", 30, 10, 7, tmp_path / "o"))
    assert gpu.trainer.accelerator == "gpu" and gpu.trainer.precision == "16-mixed" and gpu.trainer.benchmark
    assert gpu.trainer.max_steps == 30 and gpu.trainer.limit_val_batches == 2 and gpu.model.compile is True
    assert gpu.data.num_workers == 7 and gpu.test is False and gpu.callbacks.get("rich_progress_bar") is None
    assert gpu.callbacks.step_timing.warmup_steps == 10
    assert gpu.callbacks.finite_loss._target_ == "bioexp.callbacks.guards.FiniteLossGuard"
    if study != "bvae":  # the bundled digits have no root
        assert gpu.data.root.startswith(str(tmp_path))
    ddp = _compose(run_overrides(RunSpec(study, "bf16", devices=2), tmp_path, "cuda", 30, 10, 7, tmp_path / "o"))
    assert ddp.trainer.strategy._target_ == "bioexp.utils.accel.TaskDDPStrategy" and ddp.trainer.devices == 2
    assert ddp.trainer.sync_batchnorm is False and ddp.trainer.precision == "bf16-mixed"
    cpu = _compose(run_overrides(RunSpec(study, "bf16", devices=2), tmp_path, "cpu", 2, 1, 0, tmp_path / "o"))
    assert cpu.trainer.accelerator == "cpu" and cpu.trainer.strategy.start_method == "spawn"
    assert cpu.trainer.precision == "bf16-mixed"


def test_the_table_has_one_row_per_run_and_says_why_a_run_failed():
    rows = [{"run": RunSpec("csi", "bf16", compile=True), "ok": True, "samples_per_s": 1234.5, "step_s": 0.0259,
             "peak_mem_gb": 3.21, "data_wait_frac": 0.04},
            {"run": RunSpec("bvae", "amp16", devices=2), "ok": False, "error": "timed out after 150 s"}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["study", "precision", "compile", "gpus", "samples/s", "step", "ms", "peak", "GB",
                                "data", "wait", "result"]
    assert lines[1].split() == ["csi", "bf16", "yes", "1", "1,234", "25.9", "3.21", "4%", "PASS"]
    assert lines[2].split()[:8] == ["bvae", "amp16", "no", "2", "-", "-", "-", "-"]
    assert lines[2].endswith("FAIL: timed out after 150 s")


class _Slow(Dataset):
    """Items that take ``delay`` seconds to load: the loop should spend most of its time waiting for them."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int) -> torch.Tensor:
        time.sleep(self.delay)
        return torch.full((4,), float(i))


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_step_timing_counts_samples_and_sees_a_slow_loader(tmp_path):
    timing = StepTiming(warmup_steps=2, out=str(tmp_path / "timing.json"))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, callbacks=[timing])
    trainer.fit(_Tiny(), DataLoader(_Slow(0.01), batch_size=8))
    result = json.loads((tmp_path / "timing.json").read_text())
    assert result["steps"] == 12 and result["measured_steps"] == 10 and result["samples_per_epoch"] == 48
    assert len(result["epoch_s"]) == 2 and all(t > 0.48 for t in result["epoch_s"])  # 48 items x 10 ms
    # 8 items x 10 ms of loading per step, a microsecond-size model: nearly all of the step time is data wait;
    # the first step of each epoch opens a window (its loading is outside it), so 8 waits are measured.
    assert result["data_wait_frac"] > 0.8
    assert result["samples_per_s"] == pytest.approx(80 / (result["step_s"] * 10), rel=1e-6)
    assert result["peak_mem_gb"] is None


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_dry_run_on_cpu_in_bf16_autocast(tmp_path, capsys, study):
    """The whole check, as on a GPU, with tiny nets on CPU under bf16 autocast (also: every study runs in bf16)."""
    assert main(["--device", "cpu", "--studies", study, "--steps", "3", "--compile", "no", "--root",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(study + " "))
    assert row.split()[1:4] == ["bf16", "no", "1"] and row.endswith("PASS")
    timing = json.loads((tmp_path / "cpu" / "runs" / f"{study}-bf16" / "timing.json").read_text())
    assert timing["precision"] == "bf16-mixed" and timing["steps"] == 3 and timing["measured_steps"] == 2


@pytest.mark.slow
def test_dry_run_compiles_the_nets_on_cpu(tmp_path, capsys):
    """``model.compile=true`` through the check: inductor-compiled nets train (CPU, bf16 autocast)."""
    assert main(["--device", "cpu", "--studies", "ptbxl_xresnet1d50", "--steps", "2", "--compile", "only",
                 "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("PASS") == 1
    log = next((tmp_path / "cpu" / "runs" / "ptbxl_xresnet1d50-bf16-compile").glob("*.log")).read_text()
    assert "torch.compile: net" in log


def test_the_offline_wheels_are_the_versions_the_tests_run_with():
    """``make gpu-wheels`` pins are pyproject.toml's, so the GPU machine runs the code the CPU tests ran."""
    import tomllib

    makefile = (REPO / "Makefile").read_text().replace("\\\n", " ")
    pins = dict(item.split("==") for item in re.search(r"^OFFLINE_WHEELS := (.*)$", makefile, re.M).group(1).split())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = dict(dep.split("#")[0].strip().split("==") for dep in project)
    assert {"hydra-core", "wfdb", "vitaldb", "pydicom", "granite-tsfm", "transformers"} <= pins.keys()
    assert {name: pinned.get(name) for name in pins} == pins
