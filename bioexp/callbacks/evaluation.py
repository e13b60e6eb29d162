"""Post-test evaluations of self-supervised models: frozen-embedding probes and interval agreement."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from bioexp.utils.fallbacks import warn_fallback
from bioexp.utils.run import write_json

log = logging.getLogger(__name__)


@torch.no_grad()
def collect(pl_module: L.LightningModule, loader: DataLoader,
            fn: Callable[[torch.Tensor], Any]) -> tuple[Any, np.ndarray]:
    """``fn`` over every batch in eval mode, outputs concatenated (tensors or dicts of them), and the labels."""
    was_training = pl_module.training
    pl_module.eval()
    outputs, labels = [], []
    for x, y in loader:
        outputs.append(fn(x.to(pl_module.device)))
        labels.append(y.numpy())
    pl_module.train(was_training)
    return _concat(outputs), np.concatenate(labels)


def _concat(parts: list[Any]) -> Any:
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    return torch.cat(parts).float().cpu().numpy()


def _log_metrics(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)


class EmbeddingProbe(L.Callback):
    """After testing: linear probes on frozen embeddings, full and few-shot (k positives per class).

    Embeds the datamodule's ``train`` and ``test`` splits with ``pl_module.embed`` (evaluation
    windows, fixed order), writes ``few_shot.csv`` (rows k, mean/std over ``seeds``) to the run dir
    and logs ``probe/auroc_k<k>`` / ``probe/auprc_k<k>``. Unlabelled records (all-zero targets, kept
    by ``data.keep_unlabelled`` for pre-training) are left out; ``probe/n_{train,test}_{labelled,unlabelled}``
    count them.
    """

    def __init__(self, dirpath: str, ks: Sequence[int] = (10, 50, 100, 500), seeds: Sequence[int] = (0, 1, 2)):
        self.dirpath, self.ks, self.seeds = Path(dirpath), tuple(ks), tuple(seeds)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from bioexp.probe import few_shot_table, labelled_rows

        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "eval_dataloader") or not hasattr(pl_module, "embed"):
            warn_fallback(f"embedding probe skipped: {type(dm).__name__} has no eval_dataloader or "
                          f"{type(pl_module).__name__} no embed()")
            return
        train_x, train_y = collect(pl_module, dm.eval_dataloader("train"), pl_module.embed)
        test_x, test_y = collect(pl_module, dm.eval_dataloader("test"), pl_module.embed)
        counts = {f"probe/n_{split}_{kind}": float(n) for split, y in (("train", train_y), ("test", test_y))
                  for kind, n in (("labelled", labelled_rows(y).sum()), ("unlabelled", (~labelled_rows(y)).sum()))}
        log.info("Linear probes use the labelled records only: %s", counts)
        _log_metrics(trainer, counts)
        train_x, train_y = train_x[labelled_rows(train_y)], train_y[labelled_rows(train_y)]
        test_x, test_y = test_x[labelled_rows(test_y)], test_y[labelled_rows(test_y)]
        table = few_shot_table(train_x, train_y, test_x, test_y, ks=self.ks, seeds=self.seeds,
                               class_names=list(getattr(dm, "classes", [])) or None)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        table.to_csv(self.dirpath / "few_shot.csv", index=False)
        log.info("Linear probe on frozen embeddings (macro AUROC/AUPRC on test):\n%s", table.to_string(index=False))
        _log_metrics(trainer, {f"probe/{m}_k{row['k']}": float(row[f"{m}_mean"])
                               for _, row in table.iterrows() for m in ("auroc", "auprc")})


class IntervalAgreement(L.Callback):
    """After testing: do the decoder's wave timings track the true PR and QT intervals?

    On data with a ``ground_truth.csv`` (synthetic PTB-XL), Spearman correlations between
    ``tau_QRS - tau_P`` and the true PR, and ``tau_T - tau_QRS`` and the true QT, over the test
    split; plus the mean gate per wave (a gate near ``gate_min`` means that wave collapsed).
    Written to ``interpretability.json`` and logged as ``interp/*``.
    """

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)

    @rank_zero_only
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from scipy.stats import spearmanr

        dm = trainer.datamodule
        truth = dm.ground_truth("test") if dm is not None and hasattr(dm, "ground_truth") else None
        if truth is None or not hasattr(pl_module, "wave_params"):
            warn_fallback("interval check skipped: the data has no ground_truth.csv (synthetic PTB-XL only) "
                          f"or {type(pl_module).__name__} no wave_params()")
            return
        params, _ = collect(pl_module, dm.eval_dataloader("test"), pl_module.wave_params)
        if not params:
            warn_fallback("interval check skipped: the test split is empty")
            return
        tau = {w: params[w]["tau"].reshape(-1) for w in params}
        result: dict[str, float] = {f"gate_{w}": float(params[w]["gate"].mean()) for w in params}
        for name, predicted, true in (("pr", tau["QRS"] - tau["P"], truth["pr_ms"].to_numpy(float)),
                                      ("qt", tau["T"] - tau["QRS"], truth["qt_ms"].to_numpy(float))):
            ok = np.isfinite(true)  # no PR without P waves (atrial fibrillation, flutter, ...)
            result[f"spearman_{name}"] = float(spearmanr(predicted[ok], true[ok]).statistic)
            result[f"n_{name}"] = int(ok.sum())
        write_json(self.dirpath / "interpretability.json", result)
        log.info("Wave timing vs ground truth (test): %s", result)
        _log_metrics(trainer, {f"interp/{k}": v for k, v in result.items()})
