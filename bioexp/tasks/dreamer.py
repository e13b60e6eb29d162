"""Cardiac Dreamer's objective: guidance to the target view through a dreamed next frame.

The net dreams the features of frame t2 from frame t1 and the probe's move, and its guidance head
reads them as the action from t2 to the target, a'_t2. Composing the move with a'_t2 gives a'_t1,
the action from t1 to the target, which is the main task. ``composition`` says how: ``se3`` (the
published model) as 4x4 rigid transforms (``T(a'_t1) = T(move) T(a'_t2)``), ``additive`` as
6-vectors (``a'_t1 = a'_t2 - move``: the public data are labelled ``at2 = at1 + move``;
``python -m bioexp.data.check`` measures which one a data set follows):

``L = SmoothL1(a'_t1, a_t1) + lambda_t2_action * SmoothL1(a'_t2, a_t2) + lambda_latent * MSE(f'_t2, sg(f_t2))``

with actions in training-set-normalised units and ``f_t2`` the encoder's features of the real t2
frame (the published code compared against t1's). ``primary_task_only`` keeps the first term.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import torch
import torch.nn.functional as F

from bioexp import se3
from bioexp.tasks.base import Task, build

AXES = ("x_mm", "y_mm", "z_mm", "roll_deg", "pitch_deg", "yaw_deg")
COMPOSITIONS = ("se3", "additive")
Batch = dict[str, Any]


def action_t1_from(move: torch.Tensor, action_t2: torch.Tensor, composition: str) -> torch.Tensor:
    """The t1 label implied by the probe's ``move`` and the t2 label (6-DOF, mm and degrees).

    ``se3``: ``T(a_t1) = T(move) T(a_t2)`` (action to the target, the published model); ``additive``:
    ``a_t1 = a_t2 - move`` (the public data, labelled ``at2 = at1 + move``).
    """
    return se3.compose(move, action_t2) if composition == "se3" else action_t2 - move


def guidance_errors(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean translation (mm) and geodesic rotation (degrees) error, in float32 with autocast off.

    Under bf16/fp16 autocast the rotation matrices' products would lose about a degree on a few-degree
    error; these are reported figures, so they are computed at full precision whatever the trainer's.
    """
    with torch.autocast(device_type=predicted.device.type, enabled=False):
        predicted, target = predicted.float(), target.float()
        return {"guidance_trans_mm": (predicted[:, :3] - target[:, :3]).norm(dim=1).mean(),
                "guidance_rot_deg": se3.rotation_angle_deg(predicted, target).mean()}


class CardiacDreamerTask(Task):
    """``action_stats`` (training-set action mean/std, from the data) is part of the saved model."""

    def __init__(self, net: dict[str, Any], optimizer: dict[str, Any], action_stats: dict[str, list[float]],
                 image_size: int, scheduler: dict[str, Any] | None = None, smooth_l1_beta: float = 1.0,
                 lambda_t2_action: float = 1.0, lambda_latent: float = 0.2, primary_task_only: bool = False,
                 composition: str = "se3") -> None:
        if composition not in COMPOSITIONS:
            raise ValueError(f"model.composition must be one of {COMPOSITIONS}, got {composition!r}")
        scheduler = dict(scheduler) if scheduler else None
        self.scheduler_monitor = scheduler.pop("monitor", None) if scheduler else None  # ReduceLROnPlateau
        super().__init__(optimizer, scheduler)
        self.save_hyperparameters()
        self.net = build(net, image_size=image_size)
        for name in ("action_mean", "action_std", "change_mean", "change_std"):
            self.register_buffer(name, torch.tensor(action_stats[name], dtype=torch.float32))
        self._test_rows: list[tuple[int | None, str, torch.Tensor]] = []  # (dataset index, patient, |error|)
        self.per_patient: dict[str, dict[str, float]] = {}

    def configure_optimizers(self) -> Any:
        config = super().configure_optimizers()
        if self.scheduler_monitor and isinstance(config, dict):
            config["lr_scheduler"]["monitor"] = self.scheduler_monitor
        return config

    def normalize(self, action: torch.Tensor) -> torch.Tensor:
        return (action - self.action_mean) / self.action_std

    def denormalize(self, action: torch.Tensor) -> torch.Tensor:
        return action * self.action_std + self.action_mean

    def forward(self, image_t1: torch.Tensor, action_change: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predicted features of t2 and the actions to the target from t2 and t1 (mm, degrees)."""
        out = self.net(image_t1, (action_change - self.change_mean) / self.change_std)
        with torch.autocast(device_type=image_t1.device.type, enabled=False):  # rotations need float32
            action_t2 = self.denormalize(out["action_t2"].float())
            action_t1 = action_t1_from(action_change.float(), action_t2, self.hparams.composition)
        return {**out, "action_t2": action_t2, "action_t1": action_t1, "action_t2_norm": out["action_t2"]}

    def _step(self, batch: Batch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        hp = self.hparams
        out = self(batch["image_t1"], batch["action_change"])
        main = F.smooth_l1_loss(self.normalize(out["action_t1"]), self.normalize(batch["at1"]), beta=hp.smooth_l1_beta)
        aux = F.smooth_l1_loss(out["action_t2_norm"].float(), self.normalize(batch["at2"]), beta=hp.smooth_l1_beta)
        with torch.no_grad():  # the target of the dream: what the encoder sees in the real t2 frame
            target = self.net.encode(batch["image_t2"])
        latent = F.mse_loss(out["features_t2"].float(), target.float())
        total = main if hp.primary_task_only else main + hp.lambda_t2_action * aux + hp.lambda_latent * latent
        errors = (out["action_t1"].float() - batch["at1"].float()).abs().detach()
        values = {"loss": total, "main_task_loss": main, "t2_action_loss": aux, "latent_loss": latent,
                  **guidance_errors(out["action_t1"].detach(), batch["at1"]),
                  **{f"mae_{axis}": errors[:, i].mean() for i, axis in enumerate(AXES)}}
        size = len(batch["at1"])
        for name, value in values.items():
            self.log(f"{stage}/{name}", value.detach(), on_step=stage == "train" and name == "loss", on_epoch=True,
                     prog_bar=name in ("loss", "main_task_loss"), batch_size=size, sync_dist=stage != "train")
        return total, errors

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")[0]

    def _log_baseline(self, batch: Batch, stage: str) -> None:
        """Per-axis MAE of "predict the mean training action", the baseline the model must beat."""
        baseline = (self.action_mean - batch["at1"]).abs()
        self.log_dict({f"{stage}/baseline_mae_{axis}": baseline[:, i].mean() for i, axis in enumerate(AXES)},
                      on_epoch=True, batch_size=len(baseline), sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step(batch, "val")
        self._log_baseline(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        _, errors = self._step(batch, "test")
        self._log_baseline(batch, "test")
        index = batch.get("index")
        keys = index.tolist() if index is not None else [None] * len(errors)
        self._test_rows.extend(zip(keys, batch["patient"], errors.cpu(), strict=True))

    def on_test_epoch_start(self) -> None:
        self._test_rows.clear()

    def _gathered_test_rows(self) -> list[tuple[int | None, str, torch.Tensor]]:
        """Every rank's test rows, each transition once: DDP's sampler pads the last shard with repeats."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self._test_rows
        shares: list[Any] = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shares, self._test_rows)
        unique: dict[Any, tuple[int | None, str, torch.Tensor]] = {}
        for rank, share in enumerate(shares):
            for i, row in enumerate(share):
                unique.setdefault(row[0] if row[0] is not None else (rank, i), row)
        return list(unique.values())

    def on_test_epoch_end(self) -> None:
        """Per-axis MAE of each test patient over all ranks (``per_patient``, also logged as
        ``test/<patient>/mae_<axis>``)."""
        errors: dict[str, list[torch.Tensor]] = defaultdict(list)
        for _, patient, error in self._gathered_test_rows():
            errors[patient].append(error)
        self.per_patient = {}
        for patient, rows in sorted(errors.items()):
            mae = torch.stack(rows).mean(0)
            self.per_patient[patient] = {"n": len(rows), **{axis: float(mae[i]) for i, axis in enumerate(AXES)}}
            self.log_dict({f"test/{patient}/mae_{axis}": float(mae[i]) for i, axis in enumerate(AXES)}, sync_dist=True)
