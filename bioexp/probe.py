"""Frozen-embedding evaluation (EP-Prior study protocol): linear probe, few-shot subsets, comparison tables.

Pure numpy/scikit-learn so that embeddings exported once can be re-evaluated anywhere, without torch or a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

METRICS = ("auroc", "auprc")


def _check_multi_hot(x: np.ndarray, y: np.ndarray, name: str) -> None:
    """Fail early with a readable message instead of deep inside scikit-learn."""
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"{name}: expected x [N, D] and multi-hot y [N, C], got {x.shape} and {y.shape}")


def _both_values(y: np.ndarray) -> bool:
    return bool(y.any() and not y.all())


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
    C: float = 1.0,
    max_iter: int = 2000,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """One-vs-rest logistic regression on standardised frozen embeddings; macro AUROC/AUPRC on the test set.

    Only classes with positives and negatives in both the training and the test set enter the macro averages
    (a class never seen positive in training gets a constant score); ``n_classes_scored`` says how many did.
    With ``class_names``, ``auroc/<name>`` holds each class's AUROC (NaN for a class that was not scored).
    Macro values are NaN when no class could be scored.
    """
    train_x, test_x = np.asarray(train_x, dtype=np.float64), np.asarray(test_x, dtype=np.float64)
    train_y, test_y = np.asarray(train_y).astype(bool), np.asarray(test_y).astype(bool)
    _check_multi_hot(train_x, train_y, "train")
    _check_multi_hot(test_x, test_y, "test")
    if train_y.shape[1] != test_y.shape[1] or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train and test disagree: x {train_x.shape} vs {test_x.shape}, y {train_y.shape} vs "
                         f"{test_y.shape}")
    if class_names is not None and len(class_names) != train_y.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {train_y.shape[1]} classes")

    scaler = StandardScaler().fit(train_x)  # training statistics only: the test set must not leak into the probe
    train_z, test_z = scaler.transform(train_x), scaler.transform(test_x)

    aurocs: list[float] = []
    auprcs: list[float] = []
    out: dict[str, float] = {}
    for c in range(train_y.shape[1]):
        auroc = float("nan")
        if _both_values(train_y[:, c]) and _both_values(test_y[:, c]):
            clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed).fit(train_z, train_y[:, c])
            scores = clf.decision_function(test_z)
            auroc = float(roc_auc_score(test_y[:, c], scores))
            aurocs.append(auroc)
            auprcs.append(float(average_precision_score(test_y[:, c], scores)))
        # Otherwise the class is not scored: with one training value the probe could only predict a constant (AUROC
        # 0.5 by construction, not a measurement), and with one test value AUROC is undefined.
        if class_names is not None:
            out[f"auroc/{class_names[c]}"] = auroc

    out["auroc"] = float(np.mean(aurocs)) if aurocs else float("nan")
    out["auprc"] = float(np.mean(auprcs)) if auprcs else float("nan")
    out["n_classes_scored"] = float(len(aurocs))
    return out


def labelled_rows(y: np.ndarray) -> np.ndarray:
    """Rows with at least one label. In PTB-XL an all-zero row is an unlabelled record (kept for
    self-supervision), not a record negative for every class: callers leave those out of the probe."""
    return np.asarray(y).astype(bool).any(axis=1)


def few_shot_indices(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sorted unique row indices: k random positives of every class (all of them if fewer), union over classes.

    Drawing per class keeps rare diagnoses represented, which a uniform subsample of k*C rows would not.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    y = np.asarray(y).astype(bool)
    if y.ndim != 2:
        raise ValueError(f"expected multi-hot y [N, C], got shape {y.shape}")
    rng = np.random.default_rng(seed)
    picked = [np.flatnonzero(y[:, c]) for c in range(y.shape[1])]
    picked = [pos if len(pos) <= k else rng.choice(pos, size=k, replace=False) for pos in picked]
    return np.unique(np.concatenate(picked)).astype(np.int64)


def few_shot_table(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    ks: Sequence[int] = (10, 50, 100, 500),
    seeds: Sequence[int] = (0, 1, 2),
    class_names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Probe on few-shot subsets of the training set (each k, each seed) plus once on all of it; full test set.

    One row per k (std over seeds, ddof=0) and a last row ``k="all"`` (single fit, std 0). With ``class_names``,
    ``auroc/<name>`` columns hold each class's AUROC averaged over seeds.
    """
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    rows: list[dict[str, object]] = []
    runs: list[tuple[int | str, list[np.ndarray]]] = [(k, [few_shot_indices(train_y, k, s) for s in seeds]) for k in ks]
    runs.append(("all", [np.arange(len(train_y))]))  # a single fit, seeded with seeds[0] by the zip below
    for k, subsets in runs:
        results = [
            linear_probe(train_x[idx], train_y[idx], test_x, test_y, seed=seed, class_names=class_names)
            for idx, seed in zip(subsets, seeds, strict=False)
        ]
        row: dict[str, object] = {"k": k, "n_train_mean": float(np.mean([len(idx) for idx in subsets]))}
        for m in METRICS:
            values = np.array([r[m] for r in results])
            row[f"{m}_mean"], row[f"{m}_std"] = float(values.mean()), float(values.std(ddof=0))
        for name in class_names or ():
            row[f"auroc/{name}"] = float(np.mean([r[f"auroc/{name}"] for r in results]))
        rows.append(row)
    return pd.DataFrame(rows)


def comparison_table(results: Mapping[str, pd.DataFrame], metric: str = "auroc", numeric: bool = False) -> pd.DataFrame:
    """The study's Table 2: one row per model, one column per k ("10", ..., "all"), cells "0.812 ± 0.010".

    ``results`` maps model names to ``few_shot_table`` frames (also as read back from CSV, where k is a string).
    ``numeric=True`` gives the means as floats instead, for plotting or further arithmetic. Missing cells are
    empty (NaN when numeric).
    """
    columns: list[str] = []
    for table in results.values():
        columns += [k for k in table["k"].astype(str) if k not in columns]
    cells: dict[str, dict[str, object]] = {}
    for model, table in results.items():
        keyed = table.assign(k=table["k"].astype(str)).set_index("k")
        means, stds = keyed[f"{metric}_mean"], keyed[f"{metric}_std"]
        if numeric:
            cells[model] = {k: float(means[k]) for k in keyed.index}
        else:
            cells[model] = {k: f"{means[k]:.3f} ± {stds[k]:.3f}" for k in keyed.index}
    out = pd.DataFrame.from_dict(cells, orient="index").reindex(columns=columns)
    if not numeric:
        out = out.fillna("")
    out.index.name = "model"
    return out
