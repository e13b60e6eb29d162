"""Binary-vector datasets: binarized MNIST (IDX files) and scikit-learn's bundled 8x8 digits.

Images are kept as intensities in [0, 1] and binarized by ``binarize``:
``threshold`` (``x > threshold``), ``stochastic`` (one Bernoulli(x) draw per image, fixed by the
seed), or ``dynamic`` (a fresh Bernoulli(x) draw per training epoch; validation and test use the
fixed draw so their losses stay comparable across epochs).

Splits: ``official`` (MNIST: validation is a seeded, class-stratified ``val_frac`` of the 60,000
training images, test is the 10,000 t10k images, so test figures compare with published ones) or
``pooled`` (every image pooled and split at random by ``val_frac``/``test_frac``; the digits have no
official split).
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from bioexp.data.base import SplitDataModule
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

SOURCES = ("digits", "mnist")
SPLITS = ("official", "pooled")
BINARIZATIONS = ("threshold", "stochastic", "dynamic")
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_HINT = ("get the four IDX files with `python -c \"from torchvision.datasets import MNIST; "
              "MNIST('{root}', download=True)\"` (writes {root}/MNIST/raw), or use the bundled 8x8 digits: data=digits")


class Images(NamedTuple):
    """Every image of a source: intensities ``[n, pixels]`` in [0, 1], labels, image shape, and for MNIST
    ``n_train``, the number of official training images (the rows before the t10k test images)."""

    x: np.ndarray
    y: np.ndarray
    shape: tuple[int, int]
    n_train: int | None = None


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped) as a numpy array."""
    path = Path(path)
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise BioexpError(f"{path} is not an IDX file (bad magic number); re-download it")
    dtype, ndim = np.dtype(IDX_DTYPES[raw[2]]), raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(raw) - offset != dtype.itemsize * int(np.prod(shape)):
        raise BioexpError(f"{path} is truncated ({len(raw)} bytes for shape {shape}); re-download it")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(shape)


def _find_idx(root: Path, name: str) -> Path | None:
    """torchvision's ``<root>/MNIST/raw`` layout first, then ``<root>/raw`` and ``<root>``; plain or ``.gz``."""
    for folder in (root / "MNIST" / "raw", root / "raw", root):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_mnist_pair(root: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    """One part (``train`` or ``t10k``): images ``[n, h, w]`` uint8 and labels ``[n]``, checked to match."""
    image_file, label_file = MNIST_FILES[part]
    paths = [_find_idx(root, image_file), _find_idx(root, label_file)]
    if None in paths:
        missing = image_file if paths[0] is None else label_file
        raise DataNotFoundError(f"MNIST not found: no {missing}[.gz] under {root}/MNIST/raw; "
                                + MNIST_HINT.format(root=root))
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1:
        raise BioexpError(f"{paths[0]} / {paths[1]} are not an MNIST image/label pair (shapes {images.shape}, "
                          f"{labels.shape}); re-download them")
    if len(images) != len(labels):
        raise BioexpError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels; "
                          "the pair must match: re-download both")
    return images, labels


def load_mnist(root: str | Path) -> Images:
    """All 70,000 MNIST images (the 60,000 training images, then the 10,000 t10k test images)."""
    root = Path(root)
    parts = [read_mnist_pair(root, part) for part in MNIST_FILES]
    x = np.concatenate([images for images, _ in parts])
    return Images(x.reshape(len(x), -1).astype(np.float32) / 255.0,
                  np.concatenate([labels for _, labels in parts]).astype(np.int64),
                  (x.shape[1], x.shape[2]), n_train=len(parts[0][0]))


def load_digits() -> Images:
    """scikit-learn's bundled 1,797 8x8 digits (values 0..16) as ``[n, 64]`` intensities in [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    return Images(digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64), (8, 8))


def split_indices(n: int, seed: int, val_frac: float, test_frac: float, subset: int | None = None
                  ) -> dict[str, np.ndarray]:
    """The pooled split: a seeded permutation of ``n`` items, cut to ``subset`` and split into train/val/test."""
    order = np.random.default_rng(seed).permutation(n)[: subset or n]
    n_test, n_val = round(len(order) * test_frac), round(len(order) * val_frac)
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


def official_split(labels: np.ndarray, n_train: int, seed: int, val_frac: float, subset: int | None = None
                   ) -> dict[str, np.ndarray]:
    """MNIST's split: train/val drawn from the first ``n_train`` rows (seeded, stratified by class; ``subset``
    of them when given), test = every row after them (t10k, always whole so test figures stay comparable)."""
    from sklearn.model_selection import train_test_split

    pool = np.arange(n_train)
    try:
        if subset and subset < n_train:
            pool = train_test_split(pool, train_size=subset, random_state=seed, stratify=labels[pool])[0]
        train, val = train_test_split(pool, test_size=val_frac, random_state=seed, stratify=labels[pool])
    except ValueError as err:  # sklearn: too few images per class for a stratified draw
        raise BioexpError(f"cannot draw a class-stratified validation split from {len(pool)} training images "
                          f"({err}); raise data.subset or data.val_frac") from err
    return {"train": train, "val": val, "test": np.arange(n_train, len(labels))}


class BinaryImages(Dataset):
    """Items ``(bits, label)``. Fixed bits, or with ``dynamic`` a Bernoulli draw seeded by the sampler's item seed."""

    def __init__(self, intensities: np.ndarray, labels: np.ndarray, fixed: np.ndarray, dynamic: bool) -> None:
        self.intensities, self.labels, self.fixed, self.dynamic = intensities, labels, fixed, dynamic

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, item_seed = item if isinstance(item, tuple) else (item, None)
        if self.dynamic:
            if item_seed is None:  # would silently train on the fixed draw
                raise TypeError("dynamic binarization needs (index, item_seed) keys from EpochSampler")
            bits = np.random.default_rng(item_seed).random(self.intensities.shape[1]) < self.intensities[index]
        else:
            bits = self.fixed[index]
        return torch.from_numpy(np.asarray(bits, dtype=np.float32)), torch.tensor(self.labels[index])


class BinaryDataModule(SplitDataModule):
    """Binary image vectors with a train/val/test split fixed by ``seed``.

    ``source``: ``digits`` (bundled with scikit-learn, no download) or ``mnist`` (the IDX files
    under ``root``, torchvision's ``MNIST/raw`` layout). ``split``: ``official`` (MNIST only; the
    default there) or ``pooled`` (the default for the digits, which have no official split).
    ``subset=N`` keeps N images before splitting (official: N of the training images; the t10k test
    set stays whole), as the guide's ``--subset``; ``0`` or null means all of them.
    """

    seeded_eval = True  # item seeds everywhere: dynamic binarisation draws from them

    def __init__(self, source: str = "digits", root: str | None = None, split: str | None = None,
                 binarize: str = "threshold", threshold: float = 0.5, subset: int | None = None,
                 val_frac: float = 0.1, test_frac: float | None = 0.1, batch_size: int = 64, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0) -> None:
        super().__init__()
        split = split or ("official" if source == "mnist" else "pooled")
        if source not in SOURCES:
            raise BioexpError(f"unknown data.source {source!r}; choose one of {', '.join(SOURCES)}")
        if split not in SPLITS:
            raise BioexpError(f"unknown data.split {split!r}; choose one of {', '.join(SPLITS)}")
        if split == "official" and source != "mnist":
            raise BioexpError(f"data.source={source} has no official split; use data.split=pooled")
        if binarize not in BINARIZATIONS:
            raise BioexpError(f"unknown data.binarize {binarize!r}; choose one of {', '.join(BINARIZATIONS)}")
        if source == "mnist" and not root:
            raise BioexpError("data.root is required for MNIST (the folder holding MNIST/raw)")
        if subset is not None and not (subset == 0 or subset >= 10):
            raise BioexpError(f"data.subset={subset}: use at least 10 images, or 0/null for all of them")
        if not 0 < val_frac < 1:
            raise BioexpError(f"data.val_frac must be in (0, 1), got {val_frac}")
        if split == "official" and test_frac is not None:
            raise BioexpError(f"data.test_frac={test_frac} applies to data.split=pooled only; the official split "
                              "tests on the 10,000 t10k images: drop data.test_frac (null) or use data.split=pooled")
        if split == "pooled" and not (test_frac is not None and 0 < test_frac < 1 and val_frac + test_frac < 1):
            raise BioexpError("data.split=pooled needs data.test_frac in (0, 1), with data.val_frac + data.test_frac "
                              f"< 1 (got {val_frac} + {test_frac})")
        self.save_hyperparameters()
        self.hparams.split = split
        self._data: Images | None = None
        self.datasets: dict[str, BinaryImages] = {}

    def _load(self) -> Images:
        if self._data is None:
            self._data = load_digits() if self.hparams.source == "digits" else load_mnist(self.hparams.root)
        return self._data

    @property
    def dims(self) -> dict[str, object]:
        """Filled into the model config's ``???`` keys."""
        data = self._load()
        return {"input_dim": int(data.x.shape[1]), "image_shape": list(data.shape)}

    def prepare_data(self) -> None:
        self._load()

    def binarized(self, x: np.ndarray) -> np.ndarray:
        """The fixed binarization of every image (``threshold``, or one seeded Bernoulli draw)."""
        hp = self.hparams
        if hp.binarize == "threshold":
            return x > hp.threshold
        return np.random.default_rng([hp.seed, 1]).random(x.shape, dtype=np.float32) < x

    def split_rows(self, data: Images) -> dict[str, np.ndarray]:
        """Row indices of train/val/test; a ``subset`` larger than the available images is a WARNING."""
        hp = self.hparams
        available = data.n_train if hp.split == "official" else len(data.x)
        subset = hp.subset or None  # 0 = the guide's "use the full dataset"
        if subset and subset > available:
            log.warning("data.subset=%d exceeds the %d %s images; using all of them", subset, available,
                        "training" if hp.split == "official" else hp.source)
            subset = None
        if hp.split == "official":
            return official_split(data.y, data.n_train, hp.seed, hp.val_frac, subset)
        return split_indices(len(data.x), hp.seed, hp.val_frac, hp.test_frac, subset)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        data = self._load()
        fixed = self.binarized(data.x)
        for split, rows in self.split_rows(data).items():
            rows = np.sort(rows)
            self.datasets[split] = BinaryImages(data.x[rows], data.y[rows], fixed[rows],
                                                dynamic=split == "train" and self.hparams.binarize == "dynamic")
