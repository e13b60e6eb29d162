"""PTB-XL (Wagner et al., Sci Data 2020): metadata, label aggregation, folds, and the datamodule.

Reads a real PTB-XL 1.0.x directory unchanged (``ptbxl_database.csv``, ``scp_statements.csv``,
``records100/`` or ``records500/``), and the synthetic copies ``bioexp.data.synth`` writes.
Labels are aggregated from ``scp_statements.csv`` exactly as the PTB-XL benchmark does
(``compute_label_aggregations`` / ``select_data``): every SCP code of a record counts whatever
its likelihood, records without a label of the chosen set are dropped, and classes are sorted.
"""

from __future__ import annotations

import ast
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from bioexp.data.cache import ArrayCache, cached_stack, file_fingerprint
from bioexp.data.datasets import WINDOW_BASELINES, CachedSignalDataset
from bioexp.data.ecg_io import STANDARD_LEADS, read_leads
from bioexp.data.tables import read_table
from bioexp.data.base import SplitDataModule
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

LABEL_SETS = ("all", "diagnostic", "subdiagnostic", "superdiagnostic", "form", "rhythm")
RECORD_SECONDS = 10
NORMALIZATIONS = ("record", "train", "none")
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
    ``beat_offset_seconds`` before an R peak, for models of one beat (EP-Prior); ``window_baseline``
    then removes each window's isoelectric level. Training order and
    crops depend only on ``seed`` and the epoch (see :mod:`bioexp.data.sampling`).
    """

    def __init__(self, root: str, label_set: str = "superdiagnostic", sampling_rate: int = 100,
                 normalize: str = "record", crop_seconds: float | None = None, batch_size: int = 64,
                 num_workers: int = 0, pin_memory: bool = False, train_folds: tuple[int, ...] = tuple(range(1, 9)),
                 val_folds: tuple[int, ...] = (9,), test_folds: tuple[int, ...] = (10,), min_samples: int = 0,
                 max_missing_frac: float = 0.01, cache_dir: str | None = None, decode_workers: int = 2,
                 synthesize: dict | None = None, seed: int = 0, crop_align: str = "random",
                 eval_crop: bool = False, beat_offset_seconds: float = 0.35,
                 window_baseline: str = "none") -> None:
        super().__init__()
        if label_set not in LABEL_SETS:
            raise BioexpError(f"unknown data.label_set {label_set!r}; choose one of {', '.join(LABEL_SETS)}")
        if sampling_rate not in (100, 500):
            raise BioexpError(f"data.sampling_rate must be 100 or 500 (PTB-XL's two versions), got {sampling_rate}")
        if crop_align not in ("random", "beat"):
            raise BioexpError(f"unknown data.crop_align {crop_align!r}; choose random or beat")
        if window_baseline not in WINDOW_BASELINES:
            raise BioexpError(f"unknown data.window_baseline {window_baseline!r}; choose {' or '.join(WINDOW_BASELINES)}")
        if eval_crop and crop_seconds is None:
            raise BioexpError("data.eval_crop needs data.crop_seconds (the window length)")
        if normalize not in NORMALIZATIONS:
            raise BioexpError(f"unknown data.normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.save_hyperparameters()
        self.root = Path(root)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".bioexp_cache"
        self._db: pd.DataFrame | None = None
        self._meta: tuple[pd.DataFrame, list[str], np.ndarray] | None = None
        self._cache: ArrayCache | None = None

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
        """Kept records (database rows), class names and multi-hot targets."""
        if self._meta is None:
            db = self._database()
            labels = aggregate_labels(db["scp_codes"], load_statements(self.root), self.hparams.label_set)
            labels, classes, y = select_labels(labels, self.hparams.min_samples)
            if not classes:
                raise BioexpError(f"no record in {self.root} has a {self.hparams.label_set!r} label")
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
        length = self.crop_length if self.hparams.eval_crop else RECORD_SECONDS * self.hparams.sampling_rate
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
        if hp.normalize == "train":
            mean, std = self._train_stats(cache)
        self.datasets = {split: self._dataset(split, mean, std) for split in ("train", "val", "test")}

    def _dataset(self, split: str, mean: np.ndarray | None, std: np.ndarray | None,
                 random_crop: bool | None = None) -> CachedSignalDataset:
        hp = self.hparams
        rows, y = self.split_rows(split)
        random_crop = split == "train" if random_crop is None else random_crop
        crop = self.crop_length if (random_crop or hp.eval_crop) else None
        return CachedSignalDataset(self._signals_cache().path, rows, y, crop, hp.normalize, mean, std,
                                   align=hp.crop_align, fs=hp.sampling_rate, beat_offset=hp.beat_offset_seconds,
                                   random_crop=random_crop, window_baseline=hp.window_baseline)

    def eval_dataloader(self, split: str) -> DataLoader:
        """``split`` in fixed order with evaluation windows: for embeddings (probes) and analyses."""
        train = self.datasets["train"]
        return self._make_loader(self._dataset(split, train.mean, train.std, random_crop=False), shuffle=False)

    def ground_truth(self, split: str) -> pd.DataFrame | None:
        """Rows of ``ground_truth.csv`` (synthetic data only) aligned with ``split``'s dataset."""
        path = self.root / "ground_truth.csv"
        if not path.is_file():
            return None
        ids = self._database().index[self.split_rows(split)[0]]
        return pd.read_csv(path, index_col="ecg_id").loc[ids]

    def _train_stats(self, cache: ArrayCache, max_records: int = 2000) -> tuple[np.ndarray, np.ndarray]:
        """Per-lead mean/std over (an evenly spaced subset of) the training records."""
        rows, _ = self.split_rows("train")
        rows = rows[np.linspace(0, len(rows) - 1, min(max_records, len(rows))).astype(int)]
        x = cache.open()[np.sort(rows)]
        return x.mean(axis=(0, 2))[:, None].astype(np.float32), x.std(axis=(0, 2))[:, None].astype(np.float32) + 1e-6

