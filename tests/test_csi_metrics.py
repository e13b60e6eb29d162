"""CSI-Predictor loss and metrics against hand and scikit-learn computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from bioexp.tasks.csi import CSIMetrics, WeightedCSILoss, ahf_class, predicted_csi


def _batch(seed: int, n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 4, (n, 6), generator=g)
    target[torch.rand(n, 6, generator=g) < 0.15] = 4
    target[0] = 4  # an image without a gradable zone: left out of the CSI metrics
    logits = torch.randn(n, 6, 5, generator=g) + 2.0 * torch.nn.functional.one_hot(target, 5)  # better than chance
    return logits, target


def test_weighted_loss_is_the_weighted_mean_cross_entropy():
    logits, target = _batch(0)
    loss = WeightedCSILoss(unknown_weight=0.3)(logits, target)
    logp = torch.log_softmax(logits, -1).reshape(-1, 5)
    y = target.reshape(-1)
    w = torch.where(y == 4, 0.3, 1.0)
    expected = -(w * logp[torch.arange(len(y)), y]).sum() / w.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # unknown_weight=1 is plain cross-entropy; unknown_weight=0 ignores the unknown zones
    assert WeightedCSILoss(1.0)(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.reshape(-1, 5), y).item(), rel=1e-6)
    known = y != 4
    assert WeightedCSILoss(0.0)(logits, target).item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits.reshape(-1, 5)[known], y[known]).item(), rel=1e-6)


def test_metrics_match_scikit_learn_over_several_batches():
    batches = [_batch(seed) for seed in (1, 2, 3)]
    metrics = CSIMetrics()
    for logits, target in batches:
        metrics.update(logits, target)
    got = {k: v.item() for k, v in metrics.compute().items()}
    logits = torch.cat([b[0] for b in batches])
    target = torch.cat([b[1] for b in batches]).numpy()
    pred = logits.argmax(-1).numpy()

    def f1s(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
        keep = y != 4
        y, p = y[keep], p[keep]
        present = sorted((set(y) | set(p)) - {4})
        return (f1_score(y, p, labels=present, average="macro", zero_division=0),
                f1_score(y, p, labels=[0, 1, 2, 3], average="weighted", zero_division=0))

    assert (got["f1_macro"], got["f1_weighted"]) == pytest.approx(f1s(target.ravel(), pred.ravel()), abs=1e-6)
    for z, zone in enumerate(("right_sup", "left_sup", "right_mid", "left_mid", "right_inf", "left_inf")):
        assert (got[f"f1_macro_{zone}"], got[f"f1_weighted_{zone}"]) == pytest.approx(
            f1s(target[:, z], pred[:, z]), abs=1e-6)
    precision, recall, f1, _ = precision_recall_fscore_support(target.ravel(), pred.ravel(), labels=[0, 1, 2, 3, 4],
                                                               zero_division=0)
    for c in range(5):  # every zone, "unknown" (4) included
        assert got[f"precision_{c}"] == pytest.approx(precision[c], abs=1e-6)
        assert got[f"recall_{c}"] == pytest.approx(recall[c], abs=1e-6)
        assert got[f"f1_{c}"] == pytest.approx(f1[c], abs=1e-6)
    assert got["recall_4"] > 0.3 and got["precision_4"] > 0.3  # the unknown class is scored, not left out

    gradable = target != 4
    valid = gradable.any(1)
    true = (np.where(gradable, target, 0).sum(1) / np.maximum(gradable.sum(1), 1))[valid]
    graded = pred != 4
    est = np.where(graded.any(1), np.where(graded, pred, 0).sum(1) / np.maximum(graded.sum(1), 1),
                   logits[..., :4].argmax(-1).float().mean(1).numpy())[valid]
    assert got["csi_mae"] == pytest.approx(np.abs(est - true).mean(), abs=1e-5)
    assert got["csi_rmse"] == pytest.approx(np.sqrt(((est - true) ** 2).mean()), abs=1e-5)
    assert got["csi_pearson"] == pytest.approx(np.corrcoef(est, true)[0, 1], abs=1e-5)
    assert got["csi_pearson"] > 0.3  # the logits were made informative

    def band(x: np.ndarray) -> np.ndarray:
        return np.where(x <= 1.3, 0, np.where(x <= 2.2, 1, 2))

    ahf_true, ahf_pred = band(true), band(est)
    present = sorted(set(ahf_true) | set(ahf_pred))
    assert got["ahf_accuracy"] == pytest.approx(accuracy_score(ahf_true, ahf_pred), abs=1e-6)
    p, r, f, _ = precision_recall_fscore_support(ahf_true, ahf_pred, labels=present, average="macro", zero_division=0)
    assert (got["ahf_precision"], got["ahf_recall"], got["ahf_f1"]) == pytest.approx((p, r, f), abs=1e-6)
    metrics.reset()
    metrics.update(*_batch(9, n=5))
    assert metrics.ahf.compute().sum() <= 5  # reset forgets earlier batches


def test_the_csv_csi_is_compared_with_the_predicted_csi_where_given():
    logits, target = _batch(4)
    csv = torch.linspace(0, 3, len(target))
    csv[::4] = float("nan")  # blank in the CSV
    metrics = CSIMetrics()
    metrics.update(logits[:20], target[:20], csv[:20])
    metrics.update(logits[20:], target[20:], csv[20:])
    got = metrics.compute()
    est, given = predicted_csi(logits, 4).numpy(), ~torch.isnan(csv).numpy()
    est, true = est[given], csv.numpy()[given]
    assert got["csi_csv_mae"].item() == pytest.approx(np.abs(est - true).mean(), abs=1e-5)
    assert got["csi_csv_rmse"].item() == pytest.approx(np.sqrt(((est - true) ** 2).mean()), abs=1e-5)
    assert got["csi_csv_pearson"].item() == pytest.approx(np.corrcoef(est, true)[0, 1], abs=1e-5)
    plain = CSIMetrics()
    plain.update(logits, target)
    assert "csi_csv_mae" not in plain.compute()  # no csi column: no csi_csv_* metrics


def test_ahf_bands_and_predicted_csi():
    assert ahf_class(torch.tensor([0.0, 1.3, 1.31, 2.2, 2.21, 3.0])).tolist() == [0, 0, 1, 1, 2, 2]
    logits = torch.full((2, 6, 5), -5.0)
    logits[0, :, 4] = 5.0  # everything predicted unknown: fall back to the best 0-3 score (2)
    logits[0, :, 2] = 4.0
    logits[1, :3, 3] = 5.0  # three zones graded 3, three unknown: mean over the graded ones
    logits[1, 3:, 4] = 5.0
    assert predicted_csi(logits, 4).tolist() == [2.0, 3.0]
