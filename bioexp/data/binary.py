"""Binary-vector datasets: binarized MNIST (IDX files) and scikit-learn's bundled 8x8 digits.

Images are kept as intensities in [0, 1] and binarized by ``binarize``:
``threshold`` (``x > threshold``), ``stochastic`` (one Bernoulli(x) draw per image, fixed by the
seed), or ``dynamic`` (a fresh Bernoulli(x) draw per training epoch; validation and test use the
fixed draw so their losses stay comparable across epochs).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bioexp.data.base import SplitDataModule
from bioexp.errors import BioexpError, DataNotFoundError

SOURCES = ("digits", "mnist")
BINARIZATIONS = ("threshold", "stochastic", "dynamic")
MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_HINT = ("get the four IDX files with `python -c \"from torchvision.datasets import MNIST; "
              "MNIST('{root}', download=True)\"` (writes {root}/MNIST/raw), or use the bundled 8x8 digits: data=digits")


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


def load_mnist(root: str | Path) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """All 70,000 MNIST images (train then t10k) as ``[n, 784]`` intensities in [0, 1], labels, image shape."""
    root = Path(root)
    images, labels = [], []
    for image_file, label_file in MNIST_FILES.values():
        paths = [_find_idx(root, image_file), _find_idx(root, label_file)]
        if None in paths:
            missing = image_file if paths[0] is None else label_file
            raise DataNotFoundError(f"MNIST not found: no {missing}[.gz] under {root}/MNIST/raw; "
                                    + MNIST_HINT.format(root=root))
        images.append(read_idx(paths[0]))
        labels.append(read_idx(paths[1]))
    x = np.concatenate(images)
    return (x.reshape(len(x), -1).astype(np.float32) / 255.0, np.concatenate(labels).astype(np.int64),
            (x.shape[1], x.shape[2]))


def load_digits() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """scikit-learn's bundled 1,797 8x8 digits (values 0..16) as ``[n, 64]`` intensities in [0, 1]."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    return digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64), (8, 8)


def split_indices(n: int, seed: int, val_frac: float, test_frac: float, subset: int | None = None
                  ) -> dict[str, np.ndarray]:
    """A seeded permutation of ``n`` items, cut to ``subset`` and split into train/val/test."""
    order = np.random.default_rng(seed).permutation(n)[: subset or n]
    n_test, n_val = round(len(order) * test_frac), round(len(order) * val_frac)
    return {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}


class BinaryImages(Dataset):
    """Items ``(bits, label)``. Fixed bits, or with ``dynamic`` a Bernoulli draw seeded by the sampler's item seed."""

    def __init__(self, intensities: np.ndarray, labels: np.ndarray, fixed: np.ndarray, dynamic: bool) -> None:
        self.intensities, self.labels, self.fixed, self.dynamic = intensities, labels, fixed, dynamic

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, item_seed = item if isinstance(item, tuple) else (item, None)
        if self.dynamic and item_seed is not None:
            bits = np.random.default_rng(item_seed).random(self.intensities.shape[1]) < self.intensities[index]
        else:
            bits = self.fixed[index]
        return torch.from_numpy(np.asarray(bits, dtype=np.float32)), torch.tensor(self.labels[index])


class BinaryDataModule(SplitDataModule):
    """Binary image vectors with a train/val/test split fixed by ``seed``.

    ``source``: ``digits`` (bundled with scikit-learn, no download) or ``mnist`` (the IDX files
    under ``root``, torchvision's ``MNIST/raw`` layout; all 70,000 images are pooled and split
    like the digits). ``subset=N`` keeps N images (before splitting), as the guide's ``--subset``.
    """

    seeded_eval = True  # item seeds everywhere: dynamic binarisation draws from them

    def __init__(self, source: str = "digits", root: str | None = None, binarize: str = "threshold",
                 threshold: float = 0.5, subset: int | None = None, val_frac: float = 0.1, test_frac: float = 0.1,
                 batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False, seed: int = 0) -> None:
        super().__init__()
        if source not in SOURCES:
            raise BioexpError(f"unknown data.source {source!r}; choose one of {', '.join(SOURCES)}")
        if binarize not in BINARIZATIONS:
            raise BioexpError(f"unknown data.binarize {binarize!r}; choose one of {', '.join(BINARIZATIONS)}")
        if source == "mnist" and not root:
            raise BioexpError("data.root is required for MNIST (the folder holding MNIST/raw)")
        if subset is not None and subset < 10:
            raise BioexpError(f"data.subset={subset} is too small; use at least 10 images (or null for all)")
        if not (0 < val_frac < 1 and 0 < test_frac < 1 and val_frac + test_frac < 1):
            raise BioexpError("data.val_frac and data.test_frac must be in (0, 1) and sum to less than 1")
        self.save_hyperparameters()
        self._data: tuple[np.ndarray, np.ndarray, tuple[int, int]] | None = None
        self.datasets: dict[str, BinaryImages] = {}

    def _load(self) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        if self._data is None:
            self._data = load_digits() if self.hparams.source == "digits" else load_mnist(self.hparams.root)
        return self._data

    @property
    def dims(self) -> dict[str, object]:
        """Filled into the model config's ``???`` keys."""
        x, _, shape = self._load()
        return {"input_dim": int(x.shape[1]), "image_shape": list(shape)}

    def prepare_data(self) -> None:
        self._load()

    def binarized(self, x: np.ndarray) -> np.ndarray:
        """The fixed binarization of every image (``threshold``, or one seeded Bernoulli draw)."""
        hp = self.hparams
        if hp.binarize == "threshold":
            return x > hp.threshold
        return np.random.default_rng([hp.seed, 1]).random(x.shape, dtype=np.float32) < x

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        x, y, _ = self._load()
        hp = self.hparams
        fixed = self.binarized(x)
        for split, rows in split_indices(len(x), hp.seed, hp.val_frac, hp.test_frac, hp.subset).items():
            rows = np.sort(rows)
            self.datasets[split] = BinaryImages(x[rows], y[rows], fixed[rows],
                                                dynamic=split == "train" and hp.binarize == "dynamic")

