"""PTB-XL (Wagner et al., Sci Data 2020): metadata, label aggregation, folds, and the datamodule.

Reads a real PTB-XL 1.0.x directory unchanged (``ptbxl_database.csv``, ``scp_statements.csv``,
``records100/`` or ``records500/``), and the synthetic copies ``bioexp.data.synth`` writes.
Labels are aggregated from ``scp_statements.csv`` exactly as the PTB-XL benchmark does
(``compute_label_aggregations`` / ``select_data``): every SCP code of a record counts whatever
its likelihood, records without a label of the chosen set are dropped (kept, with an all-zero
label row, with ``keep_unlabelled`` for self-supervision), and classes are sorted.
"""

from __future__ import annotations

import ast
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from bioexp.data.base import SplitDataModule
from bioexp.data.cache import ArrayCache, cached_stack, file_fingerprint
from bioexp.data.datasets import WINDOW_BASELINES, CachedSignalDataset
from bioexp.data.ecg_io import STANDARD_LEADS, read_leads
from bioexp.data.rpeaks import cached_r_peaks
from bioexp.data.tables import read_table
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

LABEL_SETS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
RECORD_SECONDS = 10
NORMALIZATIONS = ("record", "train", "train_per_lead", "none")
MIN_SAMPLES_IGNORED = ("diagnostic",)  # the benchmark's select_data filters every other label set
DOWNLOAD = ("download PTB-XL (3 GB) with `aws s3 sync --no-sign-request s3://physionet-open/ptb-xl/1.0.3/ {root}` "
            "(or from https://physionet.org/content/ptb-xl/1.0.3/)")
DOWNLOAD_HINT = (DOWNLOAD + ", or use the synthetic copy: `data=ptbxl_synth`, "
                 "or write one with `python -m bioexp.data.synth ptbxl --out {root}`")


def load_database(root: str | Path) -> pd.DataFrame:
    """``ptbxl_database.csv`` indexed by ``ecg_id`` with ``scp_codes`` parsed into dicts."""
    path = Path(root) / "ptbxl_database.csv"
    if not path.is_file():
        raise DataNotFoundError(f"PTB-XL not found: {path} is missing; " + DOWNLOAD_HINT.format(root=root))
    db = read_table(path, ["scp_codes", "strat_fold", "filename_lr", "filename_hr"], index_col="ecg_id")
    db["scp_codes"] = db["scp_codes"].apply(ast.literal_eval)
    return db


def load_statements(root: str | Path) -> pd.DataFrame:
    path = Path(root) / "scp_statements.csv"
    if not path.is_file():
        raise DataNotFoundError(f"PTB-XL is incomplete: {path} is missing; " + DOWNLOAD_HINT.format(root=root))
    return read_table(path, ["diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass"], index_col=0)


def aggregate_labels(scp_codes: pd.Series, statements: pd.DataFrame, label_set: str) -> pd.Series:
    """Each record's list of labels of ``label_set`` (sorted, unique), as the PTB-XL benchmark."""
    if label_set not in LABEL_SETS:
        raise BioexpError(f"unknown data.label_set {label_set!r}; choose one of {', '.join(LABEL_SETS)}")
    if label_set == "all":
        return scp_codes.apply(lambda codes: sorted(set(codes)))
    column = "diagnostic" if label_set.endswith("diagnostic") else label_set
    table = statements[statements[column] == 1.0]
    mapping = {"diagnostic": table.index.to_series(), "subdiagnostic": table["diagnostic_subclass"],
               "superdiagnostic": table["diagnostic_class"]}.get(label_set, table.index.to_series())
    mapping = mapping.dropna().to_dict()
    return scp_codes.apply(lambda codes: sorted({mapping[c] for c in codes if c in mapping}))


def select_labels(labels: pd.Series, min_samples: int = 0) -> tuple[pd.Series, list[str], np.ndarray]:
    """Drop labels seen ``<= min_samples`` times, then records left without a label.

    Returns the kept records' label lists, the sorted class names and the multi-hot matrix.
    """
    counts = pd.Series([c for cs in labels for c in cs], dtype=object).value_counts()
    frequent = set(counts[counts > min_samples].index)
    labels = labels.apply(lambda cs: [c for c in cs if c in frequent])
    labels = labels[labels.apply(len) > 0]
    classes = sorted(frequent)
    index = {c: i for i, c in enumerate(classes)}
    y = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for row, cs in enumerate(labels):
        y[row, [index[c] for c in cs]] = 1.0
    return labels, classes, y


def task_labels(scp_codes: pd.Series, statements: pd.DataFrame, label_set: str,
                min_samples: int = 0) -> tuple[pd.Series, list[str], np.ndarray]:
    """The benchmark's labels of a task: ``compute_label_aggregations`` then ``select_data``.

    Its ``select_data`` applies ``min_samples`` to every label set except ``diagnostic``.
    """
    if label_set in MIN_SAMPLES_IGNORED and min_samples > 0:
        log.warning("data.min_samples=%d is ignored for label_set=%s, as the PTB-XL benchmark does "
                    "(its select_data filters rare labels of the other sets only)", min_samples, label_set)
        min_samples = 0
    return select_labels(aggregate_labels(scp_codes, statements, label_set), min_samples)


def labelled_mask(y: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Rows with at least one label. Kept records always have one, so an all-zero row marks an unlabelled record."""
    return y.any(axis=-1) if isinstance(y, np.ndarray) else y.any(dim=-1)


def _read_record(root: str, fs: int, filename: str) -> np.ndarray:
    signal, record_fs = read_leads(Path(root) / filename)
    if record_fs != fs:
        raise ValueError(f"{filename}: sampled at {record_fs} Hz, expected {fs} Hz")
    return signal


class PTBXLDataModule(SplitDataModule):
    """PTB-XL with the recommended split (folds 1-8 train, 9 val, 10 test) and a decode-once cache.

    ``synthesize`` (e.g. ``{records: 2000, seed: 0}``) writes a synthetic PTB-XL at ``root`` when
    it is absent, so a first run needs no download. ``crop_seconds`` trains on random windows (the
    benchmark uses 2.5 s); validation and test see the whole 10 s record unless ``eval_crop``
    (then a fixed window of the same length). ``crop_align="beat"`` starts every window
    ``beat_offset_seconds`` before an R peak (detected once per record and cached, see
    :mod:`bioexp.data.rpeaks`), for models of one beat (EP-Prior); ``window_baseline`` then
    removes each window's isoelectric level. ``eval_stride_seconds`` gives validation and test
    every ``crop_seconds`` window at that stride (batches ``[B, W, C, L]``; the task aggregates
    them, the benchmark: max over 2.5-s windows every 1.25 s). ``keep_unlabelled`` keeps records
    without a label of ``label_set`` (all-zero label rows) for self-supervision. Training order and
    crops depend only on ``seed`` and the epoch (see :mod:`bioexp.data.sampling`).
    """

    def __init__(self, root: str, label_set: str = "superdiagnostic", sampling_rate: int = 100,
                 normalize: str = "record", crop_seconds: float | None = None, batch_size: int = 64,
                 num_workers: int = 0, pin_memory: bool = False, train_folds: tuple[int, ...] = tuple(range(1, 9)),
                 val_folds: tuple[int, ...] = (9,), test_folds: tuple[int, ...] = (10,), min_samples: int = 0,
                 max_missing_frac: float = 0.01, cache_dir: str | None = None, decode_workers: int = 2,
                 synthesize: dict | None = None, seed: int = 0, crop_align: str = "random",
                 eval_crop: bool = False, beat_offset_seconds: float = 0.35,
                 window_baseline: str = "none", eval_stride_seconds: float | None = None,
                 keep_unlabelled: bool = False) -> None:
        super().__init__()
        if label_set not in LABEL_SETS:
            raise BioexpError(f"unknown data.label_set {label_set!r}; choose one of {', '.join(LABEL_SETS)}")
        if sampling_rate not in (100, 500):
            raise BioexpError(f"data.sampling_rate must be 100 or 500 (PTB-XL's two versions), got {sampling_rate}")
        if crop_align not in ("random", "beat"):
            raise BioexpError(f"unknown data.crop_align {crop_align!r}; choose random or beat")
        if window_baseline not in WINDOW_BASELINES:
            raise BioexpError(f"unknown data.window_baseline {window_baseline!r}; "
                              f"choose {' or '.join(WINDOW_BASELINES)}")
        if eval_crop and crop_seconds is None:
            raise BioexpError("data.eval_crop needs data.crop_seconds (the window length)")
        if eval_stride_seconds is not None and (crop_seconds is None or eval_crop or crop_align != "random"):
            raise BioexpError("data.eval_stride_seconds (sliding evaluation windows) needs data.crop_seconds, "
                              "data.eval_crop=false and data.crop_align=random")
        if normalize not in NORMALIZATIONS:
            raise BioexpError(f"unknown data.normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".bioexp_cache"
        self._db: pd.DataFrame | None = None
        self._meta: tuple[pd.DataFrame, list[str], np.ndarray] | None = None
        self._cache: ArrayCache | None = None
        self._peaks: ArrayCache | None = None

    # -- metadata (cheap: no signals) ------------------------------------------------------------
    def _ensure_root(self) -> None:
        if (self.root / "ptbxl_database.csv").is_file() or not self.hparams.synthesize:
            return
        from bioexp.data.synth import generate_ptbxl

        log.info("No PTB-XL at %s: writing a synthetic one (%s)", self.root, self.hparams.synthesize)
        generate_ptbxl(self.root, **self.hparams.synthesize)

    def _database(self) -> pd.DataFrame:
        if self._db is None:
            self._ensure_root()
            self._db = load_database(self.root)
        return self._db

    def metadata(self) -> tuple[pd.DataFrame, list[str], np.ndarray]:
        """Kept records (database rows), class names and multi-hot targets (all-zero: unlabelled)."""
        if self._meta is None:
            db = self._database()
            hp = self.hparams
            labels, classes, y = task_labels(db["scp_codes"], load_statements(self.root), hp.label_set,
                                             hp.min_samples)
            if not classes:
                raise BioexpError(f"no record in {self.root} has a {hp.label_set!r} label")
            if hp.keep_unlabelled:
                y_all = np.zeros((len(db), len(classes)), dtype=np.float32)
                y_all[db.index.get_indexer(labels.index)] = y
                self._meta = (db, classes, y_all)
            else:
                self._meta = (db.loc[labels.index], classes, y)
        return self._meta

    @property
    def classes(self) -> list[str]:
        return self.metadata()[1]

    @property
    def crop_length(self) -> int | None:
        hp = self.hparams
        return None if hp.crop_seconds is None else round(hp.crop_seconds * hp.sampling_rate)

    @property
    def dims(self) -> dict[str, int]:
        """What a model must know about this data: filled into ``???`` keys of the model config."""
        hp = self.hparams
        windows = hp.eval_crop or hp.eval_stride_seconds is not None
        length = self.crop_length if windows else RECORD_SECONDS * hp.sampling_rate
        return {"num_classes": len(self.classes), "in_channels": len(STANDARD_LEADS), "input_length": length}

    # -- signals ---------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._signals_cache()

    def _signals_cache(self) -> ArrayCache:
        """Decode every record of the database once; unreadable ones are skipped and counted."""
        if self._cache is not None:
            return self._cache
        db = self._database()
        fs = self.hparams.sampling_rate
        files = db["filename_lr" if fs == 100 else "filename_hr"].tolist()
        fingerprint = file_fingerprint([self.root / "ptbxl_database.csv",
                                        *(self.root / f"{f}.dat" for f in files)])
        cache = cached_stack(self.cache_dir, f"ptbxl-{fs}hz", files, (len(STANDARD_LEADS), RECORD_SECONDS * fs),
                             partial(_read_record, str(self.root), fs), fingerprint, self.hparams.decode_workers)
        if cache.errors:
            frac = len(cache.errors) / len(files)
            first = "; ".join(list(cache.errors.values())[:3])
            if frac > self.hparams.max_missing_frac:
                raise BioexpError(
                    f"{len(cache.errors)} of {len(files)} PTB-XL records are missing or unreadable ({first}); "
                    f"re-download them ({DOWNLOAD.format(root=self.root)}) "
                    f"or raise data.max_missing_frac (now {self.hparams.max_missing_frac})")
            log.warning("PTB-XL: skipping %d of %d records that are missing or unreadable (%s)",
                        len(cache.errors), len(files), first)
        self._cache = cache
        return cache

    def _peaks_cache(self) -> ArrayCache:
        """R peaks of every cached record, detected once (for beat-aligned windows)."""
        if self._peaks is None:
            self._peaks = cached_r_peaks(self._signals_cache(), self.cache_dir, self.hparams.sampling_rate,
                                         self.hparams.decode_workers)
        return self._peaks

    def split_rows(self, stage: str) -> tuple[np.ndarray, np.ndarray]:
        """Cache rows and targets of a split (``train``/``val``/``test``), unreadable records left out."""
        db_kept, _, y = self.metadata()
        cache = self._signals_cache()
        rows = self._database().index.get_indexer(db_kept.index)  # cache rows follow the database order
        folds = getattr(self.hparams, f"{stage}_folds")
        mask = db_kept["strat_fold"].isin(list(folds)).to_numpy() & cache.valid[rows]
        return rows[mask], y[mask]

    def setup(self, stage: str | None = None) -> None:
        cache = self._signals_cache()
        hp = self.hparams
        mean = std = None
        if hp.normalize in ("train", "train_per_lead"):
            mean, std = self._train_stats(cache, per_lead=hp.normalize == "train_per_lead")
        self.datasets = {split: self._dataset(split, mean, std) for split in ("train", "val", "test")}
        counts = self.label_counts()
        log.info("PTB-XL %s records (labelled + unlabelled): %s", hp.label_set,
                 ", ".join(f"{split} {n} + {u}" for split, (n, u) in counts.items()))

    def label_counts(self) -> dict[str, tuple[int, int]]:
        """Per split: records with a label of ``label_set`` and records without (kept by ``keep_unlabelled``)."""
        out = {}
        for split in ("train", "val", "test"):
            labelled = int(labelled_mask(self.split_rows(split)[1]).sum())
            out[split] = (labelled, len(self.split_rows(split)[0]) - labelled)
        return out

    def _dataset(self, split: str, mean: np.ndarray | None, std: np.ndarray | None,
                 random_crop: bool | None = None, sliding: bool = True) -> CachedSignalDataset:
        hp = self.hparams
        rows, y = self.split_rows(split)
        random_crop = split == "train" if random_crop is None else random_crop
        stride = None
        if sliding and not random_crop and hp.eval_stride_seconds is not None:
            stride = round(hp.eval_stride_seconds * hp.sampling_rate)
        crop = self.crop_length if (random_crop or hp.eval_crop or stride) else None
        peaks = self._peaks_cache().path if hp.crop_align == "beat" else None
        normalize = "train" if hp.normalize.startswith("train") else hp.normalize  # mean/std say which
        return CachedSignalDataset(self._signals_cache().path, rows, y, crop, normalize, mean, std,
                                   align=hp.crop_align, fs=hp.sampling_rate, beat_offset=hp.beat_offset_seconds,
                                   random_crop=random_crop, window_baseline=hp.window_baseline, peaks=peaks,
                                   eval_stride=stride)

    def eval_dataloader(self, split: str) -> DataLoader:
        """``split`` in fixed order, one evaluation window per record: for embeddings (probes) and analyses."""
        train = self.datasets["train"]
        dataset = self._dataset(split, train.mean, train.std, random_crop=False, sliding=False)
        return self._make_loader(dataset, shuffle=False)

    def ground_truth(self, split: str) -> pd.DataFrame | None:
        """Rows of ``ground_truth.csv`` (synthetic data only) aligned with ``split``'s dataset."""
        path = self.root / "ground_truth.csv"
        if not path.is_file():
            return None
        ids = self._database().index[self.split_rows(split)[0]]
        return pd.read_csv(path, index_col="ecg_id").loc[ids]

    def _train_stats(self, cache: ArrayCache, per_lead: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Mean/std (ddof 0) over every sample of every training record, read in chunks.

        The benchmark's ``preprocess_signals``: one ``StandardScaler`` over all leads together;
        ``per_lead`` gives each lead its own (a project variant).
        """
        rows = np.sort(self.split_rows("train")[0])
        signals = cache.open()
        axes = (0, 2) if per_lead else (0, 1, 2)
        chunks = [rows[i : i + 256] for i in range(0, len(rows), 256)]
        count = len(rows) * signals.shape[2] * (1 if per_lead else signals.shape[1])
        total = sum(np.asarray(signals[c], dtype=np.float64).sum(axis=axes) for c in chunks)
        mean = total / count
        shape = (-1, 1) if per_lead else (1, 1)
        centred = (np.square(np.asarray(signals[c], dtype=np.float64) - mean.reshape(shape)).sum(axis=axes)
                   for c in chunks)
        std = np.sqrt(sum(centred) / count)
        return (np.reshape(mean, shape).astype(np.float32),
                np.reshape(np.maximum(std, 1e-6), shape).astype(np.float32))

