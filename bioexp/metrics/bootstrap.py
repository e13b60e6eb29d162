"""Bootstrap confidence intervals of macro AUROC over test records, as the PTB-XL benchmark reports them.

The benchmark (helme/ecg_ptbxl_benchmarking, ``get_appropriate_bootstrap_samples`` and
``SCP_Experiment.evaluate``) draws 100 resamples of the test records with replacement, redrawing any
in which a class has no positive, scores each with scikit-learn's macro ``roc_auc_score``, and
reports the point estimate with the 5 % and 95 % quantiles (its ``0.925(07)`` is the larger distance
from the point to either). Here a class must also keep a negative (else AUROC is undefined).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def bootstrap_samples(y: np.ndarray, n: int = 100, seed: int = 0, max_tries: int = 100_000) -> list[np.ndarray]:
    """``n`` resamples (row indices) of ``y`` [N, C] in which every class has a positive and a negative."""
    y = np.asarray(y).astype(bool)
    rng = np.random.default_rng(seed)
    samples: list[np.ndarray] = []
    for _ in range(max_tries):
        idx = rng.integers(0, len(y), len(y))
        positives = y[idx].sum(axis=0)
        if positives.min() > 0 and positives.max() < len(y):
            samples.append(idx)
            if len(samples) == n:
                return samples
    raise ValueError(f"only {len(samples)} of {n} resamples of {len(y)} records had every class both positive "
                     "and negative: too few test records for a bootstrap interval")


def bootstrap_auroc(y: np.ndarray, scores: np.ndarray, n: int = 100, seed: int = 0) -> np.ndarray:
    """Macro AUROC of each of ``n`` seeded resamples of the test records."""
    y, scores = np.asarray(y).astype(int), np.asarray(scores, dtype=np.float64)
    return np.array([roc_auc_score(y[idx], scores[idx], average="macro") for idx in bootstrap_samples(y, n, seed)])


def interval(values: np.ndarray, level: float) -> list[float]:
    """The central ``level`` quantile interval ``[lo, hi]`` of bootstrap values."""
    tail = (1.0 - level) / 2
    return [float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))]
