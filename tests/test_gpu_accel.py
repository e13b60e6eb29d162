"""The GPU path on CPU: compile of the nets, channels_last, per-task DDP settings, launch checks, per-rank seeds,
the NaN guard without host syncs, and no host sync per step in a study's hot path."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from bioexp.callbacks.guards import FiniteLossGuard
from bioexp.callbacks.seeding import EpochSeed
from bioexp.errors import BioexpError, NonFiniteError
from bioexp.gpu_check import STUDIES, prepare, study_overrides
from bioexp.train import CONF_DIR, train
from bioexp.utils import accel, run
from tests.conftest import compose_cfg

BVAE_TINY = ["experiment=bvae", "model/bvae_set=set0", "data.subset=200", "trainer=cpu", "callbacks=none",
             "++trainer.max_steps=4", "++trainer.limit_val_batches=1", "trainer.min_epochs=0", "test=false",
             "optimized_metric=null", "print_config=false", "logger=csv", "++trainer.enable_progress_bar=false",
             "++callbacks.rich_progress_bar=null"]


def _model_cfg(experiment: str, **dims):
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        cfg = compose("train", overrides=[f"experiment={experiment}"])
    run.fill_dims(cfg.model, dims)
    return cfg


@pytest.mark.slow  # about a minute of tracing on 2 busy cores
def test_compile_compiles_the_nets_not_the_task_and_keeps_checkpoint_keys():
    cfg = _model_cfg("ptbxl_xresnet1d50", num_classes=5)
    cfg.model.net.arch, cfg.model.net.block_widths, cfg.model.net.stem_widths = "xresnet1d18", [8, 8, 16, 16], [8, 8, 8]
    eager = run.build_task(cfg.model)
    cfg.model.compile = {"backend": "aot_eager"}  # dynamo + AOT autograd on CPU, without a C++ toolchain
    compiled = run.build_task(cfg.model)
    compiled.load_state_dict(eager.state_dict())
    assert "compile" not in compiled.hparams  # a run-time option, not a hyperparameter
    compiled.configure_model()
    assert compiled.net._compiled_call_impl is not None and eager.net._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randn(4, 12, 250, generator=torch.Generator().manual_seed(0))
    eager.eval(), compiled.eval()  # no dropout: the same numbers expected
    out_eager, out_compiled = eager(x), compiled(x)
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-4, atol=1e-5)
    out_compiled.square().sum().backward()
    out_eager.square().sum().backward()
    first = next(n for n, p in eager.named_parameters() if p.grad is not None)
    grads = [dict(task.named_parameters())[first].grad for task in (compiled, eager)]
    torch.testing.assert_close(*grads, rtol=1e-4, atol=1e-5)


def test_channels_last_for_the_2d_nets_on_cuda_only(monkeypatch):
    stats = {f"{kind}_{stat}": [float(stat == "std")] * 6 for kind in ("action", "change") for stat in ("mean", "std")}
    cfg = _model_cfg("cardiac_dreamer", image_size=64, action_stats=stats)
    assert cfg.model.channels_last is True and _model_cfg("csi", num_zones=6, num_classes=5).model.channels_last
    cfg.model.net.update(d_model=32, num_heads=2, num_layers=1, dim_feedforward=64, arch="resnet18")
    task = run.build_task(cfg.model)
    conv = next(m for m in task.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    task.configure_model()  # no CUDA: unchanged
    assert not conv.weight.is_contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    task._accel_done = False
    task.configure_model()
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(("experiment", "dims", "overrides", "unused"), [
    ("ep_prior", {}, {}, False),
    ("ep_prior_no_contrast", {}, {}, True),  # the projection head gets no gradient
    ("ptbxl_xresnet1d50", {"num_classes": 5}, {}, False),
    ("csi", {"num_zones": 6, "num_classes": 5}, {}, False),
])
def test_ddp_finds_unused_parameters_where_the_task_needs_it(monkeypatch, experiment, dims, overrides, unused):
    cfg = _model_cfg(experiment, **dims)
    task = run.build_task(cfg.model)
    seen = {}
    monkeypatch.setattr(DDPStrategy, "configure_ddp", lambda self: seen.update(self._ddp_kwargs))
    strategy = accel.TaskDDPStrategy()
    strategy._lightning_module = task
    strategy.configure_ddp()
    assert seen["find_unused_parameters"] is unused
    forced = accel.TaskDDPStrategy(find_unused_parameters=True)
    forced._lightning_module = task
    forced.configure_ddp()
    assert seen["find_unused_parameters"] is True


def test_staged_unfreezing_and_raddino_ask_ddp_for_unused_parameters():
    from bioexp.tasks.csi import CSITask
    from bioexp.tasks.finetune import InflatedRegressor

    staged = SimpleNamespace(unfreeze={"head_only_epochs": 2, "last_n_blocks": None})
    assert InflatedRegressor.ddp_find_unused_parameters.fget(staged) is True
    staged.unfreeze["head_only_epochs"] = 0
    assert InflatedRegressor.ddp_find_unused_parameters.fget(staged) is False
    raddino = SimpleNamespace(hparams=SimpleNamespace(backbone={"name": "raddino"}))
    assert CSITask.ddp_find_unused_parameters.fget(raddino) is True


def test_multirun_with_lightning_launched_ddp_is_refused_in_one_line(monkeypatch):
    for var in accel.EXTERNAL_LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=CONF_DIR):
        ddp = compose("train", overrides=["trainer=ddp"])
        sim = compose("train", overrides=["trainer=ddp_sim"])
        multi_gpu = compose("train", overrides=["trainer=gpu", "trainer.devices=2"])
    with pytest.raises(BioexpError, match=r"cannot launch its own DDP ranks .* torchrun or srun") as err:
        accel.check_launch(ddp, multirun=True)
    assert "\n" not in str(err.value)
    with pytest.raises(BioexpError):
        accel.check_launch(multi_gpu, multirun=True)
    accel.check_launch(ddp, multirun=False)  # a single run: Lightning launches the ranks
    accel.check_launch(sim, multirun=True)   # spawned ranks do not re-run the command line
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "1")  # torchrun started the ranks: one sweep per rank in lockstep
    accel.check_launch(ddp, multirun=True)


def test_prepare_data_runs_one_rank_at_a_time(tmp_path):
    """Two ranks preparing the same data wait for each other (a file lock per data config: it holds across
    processes as across these threads, each opening the lock file itself)."""
    import threading

    log = tmp_path / "log"
    threads = [threading.Thread(target=_locked_write, args=(str(log), i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = log.read_text().split()
    assert sorted(lines) == ["end0", "end1", "start0", "start1"]
    assert lines[0][-1] == lines[1][-1] and lines[2][-1] == lines[3][-1]  # never interleaved


def _locked_write(path: str, i: int) -> None:
    import time

    with accel.node_lock({"root": path}), open(path, "a") as f:
        f.write(f"start{i}\n")
        f.flush()
        time.sleep(0.3)
        f.write(f"end{i}\n")


def test_each_rank_draws_its_own_dropout_and_masks_rank_0_keeps_the_one_process_stream():
    draws = {}
    for rank in (0, 1):
        EpochSeed(7).on_train_epoch_start(SimpleNamespace(current_epoch=3, global_rank=rank), None)
        draws[rank] = torch.rand(3)
    torch.manual_seed((7 + 1_000_003 * 3) % 2**32)
    torch.testing.assert_close(draws[0], torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


class _NanAfter(L.LightningModule):
    """Adam on a linear fit whose loss turns NaN at step ``bad_step``."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.bad_step = bad_step

    def training_step(self, batch, batch_idx):
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        return loss * float("nan") if self.global_step == self.bad_step else loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


class _CountSyncs(L.Callback):
    """Counts host syncs (``item``, ``bool``, ``tolist``, ``float``, ``int``, ``cpu``, ``numpy``, ``nonzero``,
    boolean-mask indexing) while the training step and every other callback's per-step hooks run (not
    Lightning's own loop code)."""

    METHODS = ("item", "__bool__", "tolist", "__float__", "__int__", "cpu", "numpy", "nonzero")
    HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
             "on_train_batch_end")

    def __init__(self) -> None:
        self.count, self.steps, self._on = 0, 0, False
        self.per_step: list[int] = []  # the count at each step's end
        self.epoch_ends: list[bool] = []  # whether that step was its epoch's last

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for method in (*self.METHODS, "__getitem__"):
            original = getattr(torch.Tensor, method)
            counting = self._counting_masks if method == "__getitem__" else self._counting
            setattr(torch.Tensor, method, counting(original))
            self._restore = getattr(self, "_restore", []) + [(method, original)]
        pl_module.training_step = self._within(pl_module.training_step)
        for callback in trainer.callbacks:
            if callback is not self:
                for hook in self.HOOKS:
                    setattr(callback, hook, self._within(getattr(callback, hook)))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for method, original in self.__dict__.pop("_restore", []):
            setattr(torch.Tensor, method, original)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.teardown(trainer, pl_module, "fit")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.steps += 1
        self.per_step.append(self.count)
        self.epoch_ends.append(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)

    def syncs_within_epochs(self) -> list[int]:
        """Host syncs in each step that is not its epoch's last (where the progress bar shows the epoch)."""
        added = [b - a for a, b in zip([0, *self.per_step], self.per_step, strict=False)]
        return [n for n, end in zip(added, self.epoch_ends, strict=True) if not end]

    def _counting(self, original):
        def wrapper(tensor, *args, **kwargs):
            self.count += self._on
            return original(tensor, *args, **kwargs)
        return wrapper

    def _counting_masks(self, original):
        """Boolean-mask indexing (``x[mask]``): like ``nonzero``, its output size is known only on the device."""
        def wrapper(tensor, index, *args, **kwargs):
            indices = index if isinstance(index, tuple) else (index,)
            self.count += self._on and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
            return original(tensor, index, *args, **kwargs)
        return wrapper

    def _within(self, fn):
        def wrapper(*args, **kwargs):
            self._on = True
            try:
                return fn(*args, **kwargs)
            finally:
                self._on = False
        return wrapper


def _regression_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def test_nan_guard_zeroes_the_bad_step_on_device_and_stops_at_the_next_check(tmp_path: Path):
    model, counter = _NanAfter(bad_step=3), _CountSyncs()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[FiniteLossGuard(check_every_n_steps=5), counter])
    with pytest.raises(NonFiniteError, match=r"training loss became nan at epoch 0, step 3; that step's"):
        trainer.fit(model, _regression_loader())
    # It ran on to the check at the end of the 5th step (raising there, before the counter saw that step end),
    # with host syncs only in that check: none in the four steps before.
    assert counter.per_step == [0, 0, 0, 0] and counter.count > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN gradient never reached the weights


def _train_counting_syncs(overrides: list[str], out: Path) -> _CountSyncs:
    """Train the composed run with a :class:`_CountSyncs` last among its callbacks; returns the counter."""
    cfg = compose_cfg([*overrides, "+callbacks.syncs._target_=tests.test_gpu_accel._CountSyncs"], out)
    counters = []
    original = run.instantiate_group

    def keep(group):
        made = original(group)
        counters.extend(c for c in made if isinstance(c, _CountSyncs))
        return made

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run, "instantiate_group", keep)
        train(cfg)
    return counters[0]


# The study's own callbacks with the progress bar on, as on a GPU (the bar reads the logged values once an hour
# here, and at the epoch's last step); two epochs of 4 steps.
STUDY_CALLBACKS_ON = ["++trainer.enable_progress_bar=true", "callbacks.rich_progress_bar.metrics_interval_s=3600",
                      "++trainer.limit_train_batches=4", "++trainer.max_steps=8"]


def test_bf16_autocast_hot_path_has_no_host_sync_per_step(tmp_path: Path):
    """A study's training step (binary VAE, bf16 autocast on CPU) plus its default per-step callbacks (NaN guard,
    epoch seeds, checkpoints, early stopping, the progress bar with the patience counter): no host sync in any
    step but the epoch's last, where the bar shows the epoch's values."""
    base = [o for o in BVAE_TINY if o not in ("callbacks=none", "++callbacks.rich_progress_bar=null",
                                                "++trainer.enable_progress_bar=false")]
    counter = _train_counting_syncs([*base, "trainer.precision=bf16-mixed", *STUDY_CALLBACKS_ON], tmp_path)
    assert counter.steps == 8 and counter.epoch_ends == [False] * 3 + [True] + [False] * 3 + [True]
    assert counter.syncs_within_epochs() == [0] * 6


def test_the_progress_bar_reads_the_logged_values_only_when_its_interval_has_passed(tmp_path: Path):
    """Lightning's own bar converts each ``prog_bar`` value to a number after every step (a host sync on a GPU)."""
    from bioexp.callbacks.progress import ProgressBar

    counts = {}
    for interval in (0.0, 3600.0):
        counter, bar = _CountSyncs(), ProgressBar(metrics_interval_s=interval)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_model_summary=False,
                            enable_checkpointing=False, callbacks=[bar, counter])
        trainer.fit(_LogsLoss(), _regression_loader())  # 8 steps per epoch
        counts[interval] = counter.per_step
        assert bar.get_metrics(trainer, trainer.lightning_module)["train/loss"] == pytest.approx(
            trainer.callback_metrics["train/loss"].item())
    assert all(b > a for a, b in zip([0, *counts[0.0]], counts[0.0], strict=False))  # a read after every step
    assert counts[3600.0] == [0] * 7 + [1] + [1] * 7 + [2]  # only at each epoch's last step


class _LogsLoss(_NanAfter):
    def __init__(self) -> None:
        super().__init__(bad_step=-1)

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True)
        return loss


@pytest.mark.slow
@pytest.mark.parametrize("study", STUDIES)
def test_every_studys_hot_path_has_no_host_sync_per_step(tmp_path: Path, study: str):
    """Each study's training step and its own callbacks (tiny nets of ``gpu_check --device cpu``), bf16 autocast."""
    root = tmp_path.resolve()
    assert prepare([study], root, "cpu") == ""
    overrides = [*study_overrides(study, root, "cpu"), "trainer=cpu", "trainer.precision=bf16-mixed",
                 "trainer.min_epochs=0", "++trainer.limit_val_batches=1", "test=false", "optimized_metric=null",
                 "print_config=false", "logger=csv", "data.num_workers=0", *STUDY_CALLBACKS_ON,
                 *(["data.batch_size=4"] if study == "vitaldb_msm" else [])]  # else one batch per epoch
    counter = _train_counting_syncs(overrides, root / "run")
    assert counter.steps == 8 and counter.syncs_within_epochs() == [0] * 6
