"""The PTB-XL benchmark's evaluation: max over sliding windows, bootstrap intervals, labelled-only scores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from bioexp.metrics.bootstrap import bootstrap_auroc, bootstrap_samples, interval
from bioexp.tasks.classifier import MultiLabelClassifier

NET = {"_target_": "bioexp.nets.xresnet1d.XResNet1d", "arch": "xresnet1d18", "num_classes": 3,
       "stem_widths": [8, 8, 16], "block_widths": [16, 16, 32, 32], "head_hidden": [16]}
OPT = {"_target_": "torch.optim.AdamW", "lr": 1e-3}


class WindowMean(nn.Module):
    """Logits of a window: its mean times (1, -1, 2), so each class has a known best window."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2))[:, None] * torch.tensor([1.0, -1.0, 2.0])


def _task(aggregate: str = "max") -> MultiLabelClassifier:
    task = MultiLabelClassifier(NET, 3, OPT, window_aggregate=aggregate)
    task.net = WindowMean()
    return task


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_sliding_windows_are_scored_by_the_max_over_windows(aggregate: str):
    levels = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, -0.2]])  # 2 records x 3 windows, constant windows
    x = levels[:, :, None, None].expand(2, 3, 12, 250).clone()
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    loss, probs, labelled = _task(aggregate)._step((x, y), "val")
    window_probs = torch.sigmoid(levels[..., None] * torch.tensor([1.0, -1.0, 2.0]))  # [record, window, class]
    expected = window_probs.amax(dim=1) if aggregate == "max" else window_probs.mean(dim=1)
    torch.testing.assert_close(probs, expected)
    if aggregate == "max":  # record 0: class 0 peaks in window 3 (2.0), class 1 in window 2 (1.0), class 2 in 3 (4.0)
        torch.testing.assert_close(probs[0], torch.sigmoid(torch.tensor([2.0, 1.0, 4.0])))
    window_logits = torch.logit(window_probs)
    bce = nn.functional.binary_cross_entropy_with_logits(window_logits, y[:, None].expand(2, 3, 3))
    torch.testing.assert_close(loss, bce)  # the benchmark's valid_loss: over windows
    assert labelled.tolist() == [True, True]


def test_unlabelled_rows_enter_neither_loss_nor_metrics():
    task = _task()
    x = torch.randn(4, 12, 250)
    y = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    loss, _, labelled = task._step((x, y), "val")
    assert labelled.tolist() == [True, False, True, False]
    logits = WindowMean()(x)
    torch.testing.assert_close(loss, nn.functional.binary_cross_entropy_with_logits(logits[[0, 2]], y[[0, 2]]))
    only_unlabelled, _, _ = task._step((x[[1, 3]], y[[1, 3]]), "train")
    assert only_unlabelled.item() == 0.0  # not NaN (BCE over no rows)


def test_bootstrap_is_the_benchmarks_and_seeded():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 4)) < 0.2).astype(int)
    y[:4] = np.eye(4)  # every class has a positive
    scores = y + rng.normal(0, 0.8, y.shape)
    values = bootstrap_auroc(y, scores, n=100, seed=3)
    again = bootstrap_auroc(y, scores, n=100, seed=3)
    np.testing.assert_array_equal(values, again)
    samples = bootstrap_samples(y, 100, seed=3)
    assert len(samples) == 100 and all(len(s) == 300 for s in samples)
    assert values[7] == pytest.approx(roc_auc_score(y[samples[7]], scores[samples[7]], average="macro"))
    lo, hi = interval(values, 0.95)
    assert lo == pytest.approx(np.quantile(values, 0.025)) and hi == pytest.approx(np.quantile(values, 0.975))
    assert interval(values, 0.90) == pytest.approx([np.quantile(values, 0.05), np.quantile(values, 0.95)])
    point = roc_auc_score(y, scores, average="macro")
    assert lo < point < hi and hi - lo < 0.1
    with pytest.raises(ValueError, match="too few test records"):
        bootstrap_samples(np.array([[1], [0]]), 100, seed=0, max_tries=50)


def test_embedding_probe_scores_labelled_records_only(tmp_path, monkeypatch):
    from bioexp.callbacks import evaluation

    rng = np.random.default_rng(0)
    y_train = (rng.random((120, 2)) < 0.4).astype(np.float32)
    y_test = (rng.random((60, 2)) < 0.4).astype(np.float32)
    batches = {"train": (rng.normal(size=(120, 4)), y_train), "test": (rng.normal(size=(60, 4)), y_test)}
    monkeypatch.setattr(evaluation, "collect", lambda module, split, fn: batches[split])
    seen = {}

    def fake_table(train_x, train_y, test_x, test_y, **kwargs):
        seen.update(train=train_y, test=test_y)
        import pandas as pd
        return pd.DataFrame([{"k": "all", "auroc_mean": 0.5, "auprc_mean": 0.5}])

    monkeypatch.setattr("bioexp.probe.few_shot_table", fake_table)
    logged = {}
    trainer = SimpleNamespace(datamodule=SimpleNamespace(eval_dataloader=lambda split: split, classes=["A", "B"]),
                              loggers=[SimpleNamespace(log_metrics=lambda m, step: logged.update(m))], global_step=0)
    evaluation.EmbeddingProbe(str(tmp_path)).on_test_end(trainer, SimpleNamespace(embed=None))
    unlabelled_train = int((y_train.sum(axis=1) == 0).sum())
    assert unlabelled_train > 0 and len(seen["train"]) == 120 - unlabelled_train
    assert seen["train"].any(axis=1).all() and seen["test"].any(axis=1).all()
    assert logged["probe/n_train_unlabelled"] == unlabelled_train
    assert logged["probe/n_test_labelled"] == len(seen["test"])
