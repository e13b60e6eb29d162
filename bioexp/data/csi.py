"""CSI-Predictor data: chest X-rays with a congestion score (0-3, or ungradable) per lung zone.

Reads the cohort's layout unchanged: a ``;``-separated labels CSV
(``FileID;right_sup;left_sup;right_mid;left_mid;right_inf;left_inf``, optionally a patient
column and the cohort's own ``csi`` average) and an image folder holding each ``FileID`` as NIfTI
(``.nii.gz``/``.nii``, float32, stored transposed and mirrored as the cohort's converter wrote them),
PNG/JPEG or DICOM (any transfer syntax pydicom's installed plugins decode). A blank score or an
explicit ``4`` means ungradable and becomes class 4 ("unknown"); spreadsheet exports' ``12345.0``
FileIDs are read as ``12345``. Rows with another score are skipped and reported; missing or
unreadable images are skipped with one log line each, and more than ``max_unreadable`` of them fail
the run. Images are decoded once, scaled to [0, 1] and resized to the backbone's input size into a
``.npy`` memmap cache (see :mod:`bioexp.data.cache`).
"""

from __future__ import annotations

import logging
import re
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from bioexp.data.base import SplitDataModule
from bioexp.data.cache import ArrayCache, cached_stack, file_fingerprint
from bioexp.data.sampling import item_rng
from bioexp.data.synth.csi import ZONES
from bioexp.errors import BioexpError, DataNotFoundError
from bioexp.utils.fallbacks import warn_fallback

log = logging.getLogger(__name__)

UNKNOWN = 4  # class index of an ungradable zone (a blank or an explicit 4 in the labels CSV)
PATIENT_COLUMNS = ("PatientID", "AdmissionID", "ExamCode")  # looked for in this order when not configured
CSI_COLUMN = "csi"  # the cohort's own CSI average per image, compared with the predicted one when present
EXTENSIONS = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm")
# Per-channel mean/std the pretrained backbones were trained with (RadDINO: its image processor's).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "raddino": ((0.5307,) * 3, (0.2583,) * 3),
    "zscore": None,  # per image
    "minmax": None,  # [0, 1] as cached
}
HINT = ("point data.root at a folder holding {labels} and {images}/, or use the synthetic copy "
        "(`data=csi`, written on first use) or write one with `python -m bioexp.data.synth csi --out {root}`")


def normalise_id(value: str) -> str:
    """``"12345.0"`` → ``"12345"``: spreadsheet exports write integer identifiers as floats."""
    return re.sub(r"^(\d+)\.0+$", r"\1", value.strip())


def read_labels(path: str | Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Labels CSV → table with integer zone classes (blank or 4 → :data:`UNKNOWN`) and the skipped rows' reasons.

    FileIDs and the identifier columns of :data:`PATIENT_COLUMNS` are normalised with
    :func:`normalise_id`; a ``csi`` column becomes a float column (NaN where blank).
    """
    path = Path(path)
    if not path.is_file():
        raise DataNotFoundError(f"CSI labels not found: {path}")
    table = pd.read_csv(path, sep=";", dtype=str, keep_default_na=False)
    missing = [c for c in ("FileID", *ZONES) if c not in table.columns]
    if missing:
        raise BioexpError(f"{path} lacks the columns {missing}; expected a ';'-separated CSV with "
                          f"FileID;{';'.join(ZONES)}")
    table["FileID"] = table["FileID"].map(normalise_id)
    for column in PATIENT_COLUMNS:
        if column in table.columns:
            table[column] = table[column].map(normalise_id)
    skipped: dict[str, str] = {}
    raw = table[list(ZONES)].apply(lambda col: col.str.strip())
    blank = raw.isin(["", "nan", "NaN", "NA", "None"])
    values = raw.apply(pd.to_numeric, errors="coerce")
    bad = ~blank & ~values.isin([0, 1, 2, 3, UNKNOWN])
    for i in np.flatnonzero(bad.any(axis=1).to_numpy()):
        cols = [z for z in ZONES if bad.iloc[i][z]]
        found = ", ".join(f"{c}={raw.iloc[i][c]!r}" for c in cols)
        skipped[table["FileID"].iat[i]] = f"score outside 0-3 (or 4 = ungradable) in {found}"
    duplicated = table["FileID"].duplicated()
    for file_id in table.loc[duplicated, "FileID"]:
        skipped.setdefault(file_id, "FileID appears more than once (first row kept)")
    keep = ~bad.any(axis=1) & ~duplicated & (table["FileID"] != "")
    table = table[keep].reset_index(drop=True)
    table[list(ZONES)] = values[keep].fillna(UNKNOWN).astype(int).to_numpy()
    if CSI_COLUMN in table.columns:
        table[CSI_COLUMN] = pd.to_numeric(table[CSI_COLUMN].str.strip(), errors="coerce")
    return table, skipped


def find_image(images_dir: str | Path, file_id: str) -> Path:
    """The image file of ``file_id``: the name itself if it has an extension, else the first of :data:`EXTENSIONS`."""
    images_dir = Path(images_dir)
    if file_id.lower().endswith(EXTENSIONS) and (images_dir / file_id).is_file():
        return images_dir / file_id
    for ext in EXTENSIONS:
        path = images_dir / f"{file_id}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"{file_id}: no image in {images_dir} (tried {', '.join(EXTENSIONS)})")


def read_dicom(path: str | Path) -> np.ndarray:
    """A DICOM image as displayed: stored values → modality LUT (rescale) → VOI LUT or window
    centre/width → MONOCHROME1 inverted (last: windowing is defined on the stored polarity), so air is dark.

    Compressed transfer syntaxes decode through pydicom's plugins (Pillow: JPEG baseline, JPEG 2000;
    pylibjpeg-libjpeg: JPEG Lossless, JPEG-LS; pylibjpeg-openjpeg: JPEG 2000; pylibjpeg-rle: RLE).
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    try:
        data = ds.pixel_array
    except (RuntimeError, NotImplementedError) as exc:  # pydicom: no installed plugin decodes this syntax
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown transfer syntax")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{Path(path).name}: cannot decode {getattr(syntax, 'name', syntax)} ({reason})") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError(f"{Path(path).name}: {ds.NumberOfFrames} frames, expected one radiograph")
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        raise ValueError(f"{Path(path).name}: {ds.PhotometricInterpretation} colour image, expected grayscale")
    data = apply_voi_lut(apply_modality_lut(data, ds), ds).astype(np.float32)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # bright = air: invert
        data = data.max() + data.min() - data
    return data


def read_nifti(path: str | Path) -> np.ndarray:
    """A 2-D NIfTI image (singleton axes, e.g. ``(1, H, W)`` or ``(H, W, 1)``, dropped), un-transposed and
    un-mirrored as the cohort's converter stored it."""
    import nibabel as nib

    data = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    if data.ndim > 2:
        data = data.squeeze()
    if data.ndim != 2:
        raise ValueError(f"{Path(path).name}: NIfTI of shape {data.shape}, expected one 2-D image")
    return np.ascontiguousarray(np.fliplr(data.T))


def read_image(path: str | Path) -> np.ndarray:
    """A grayscale image ``[rows, cols]`` (float32, raw intensities, air dark), rows top to bottom."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith(".dcm"):
        return read_dicom(path)
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("F" if img.mode.startswith("I") else "L"), dtype=np.float32)


def image_errors() -> tuple[type[BaseException], ...]:
    """The image readers' own "not a valid file" errors (neither is an OSError or ValueError)."""
    from nibabel.filebasedimages import ImageFileError
    from pydicom.errors import InvalidDicomError

    return ImageFileError, InvalidDicomError


def decode_image(images_dir: str, size: int, file_id: str) -> np.ndarray:
    """Find, read, scale to [0, 1] (min-max) and resize to ``size``² (antialiased bilinear)."""
    data = read_image(find_image(images_dir, file_id))
    if not np.isfinite(data).all():
        raise ValueError(f"{file_id}: image holds NaN or infinite values")
    lo, hi = float(data.min()), float(data.max())
    data = (data - lo) / (hi - lo) if hi > lo else np.zeros_like(data)
    x = torch.from_numpy(np.ascontiguousarray(data))[None, None]
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x[0, 0].clamp(0, 1).numpy()


def csi_average(targets: np.ndarray) -> np.ndarray:
    """Mean score of each image's gradable zones (NaN when none is gradable)."""
    gradable = targets != UNKNOWN
    total = np.where(gradable, targets, 0).sum(axis=1)
    count = gradable.sum(axis=1)
    return np.divide(total, count, out=np.full(len(targets), np.nan), where=count > 0)


def strata(targets: np.ndarray) -> np.ndarray:
    """Stratification key per image: CSI average band (AHF class) x presence of an ungradable zone."""
    avg = csi_average(targets)
    band = np.where(np.isnan(avg), 3, np.digitize(np.nan_to_num(avg), [1.3, 2.2], right=True))
    return band * 2 + (targets == UNKNOWN).any(axis=1)


def split_indices(targets: np.ndarray, groups: np.ndarray | None, fractions: tuple[float, float, float],
                  seed: int) -> dict[str, np.ndarray]:
    """Seeded stratified train/val/test split of the rows; whole patients go to one split when ``groups``."""
    from sklearn.model_selection import train_test_split

    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-6:
        raise BioexpError(f"data.split must be three positive fractions summing to 1, got {list(fractions)}")
    keys = strata(targets)
    groups = np.arange(len(targets)) if groups is None else np.asarray(groups)
    units, first = np.unique(groups, return_index=True)
    unit_keys = keys[first]  # a patient is stratified by their first image
    if len(units) < 3:
        raise BioexpError(f"only {len(units)} usable patients/images; the split needs at least 3")
    rest = fractions[1] + fractions[2]

    def split(items: np.ndarray, labels: np.ndarray, test_size: float, offset: int) -> tuple[np.ndarray, np.ndarray]:
        try:  # stratify if every stratum has two members, else split at random
            return tuple(train_test_split(items, test_size=test_size, random_state=seed + offset, stratify=labels))
        except ValueError:
            warn_fallback("CSI split: a stratum has fewer than two members; split at random, not stratified")
            return tuple(train_test_split(items, test_size=test_size, random_state=seed + offset))

    order = np.arange(len(units))
    train_u, rest_u = split(order, unit_keys, rest, 0)
    val_u, test_u = split(rest_u, unit_keys[rest_u], fractions[2] / rest, 1)
    split_of = {}
    for name, chosen in (("train", train_u), ("val", val_u), ("test", test_u)):
        split_of[name] = np.flatnonzero(np.isin(groups, units[chosen]))
    return split_of


class CSIDataset(Dataset):
    """``(image [3, S, S], zone classes [6])`` from rows of the decoded-image memmap, with the CSV's
    ``csi`` value (NaN where blank) as a third element when ``csi`` is given.

    Keys may be ``(index, item_seed)`` from :class:`~bioexp.data.sampling.EpochSampler`: the
    augmentation then depends on that seed alone (reproducible, resumable).
    """

    def __init__(self, path: str | Path, rows: np.ndarray, targets: np.ndarray, normalize: str = "imagenet",
                 augment: dict[str, Any] | None = None, csi: np.ndarray | None = None) -> None:
        if normalize not in NORMALIZATIONS:
            raise BioexpError(f"unknown data.normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        self.path, self.rows = Path(path), np.asarray(rows)
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.csi = None if csi is None else torch.as_tensor(np.asarray(csi, dtype=np.float32))
        self.normalize, self.augment = normalize, augment
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    @property
    def images(self) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return self._images

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        i, item_seed = key if isinstance(key, tuple) else (key, None)
        x = torch.from_numpy(np.array(self.images[self.rows[i]], dtype=np.float32))[None]
        if self.augment:
            x = augment_image(x, item_rng(item_seed), **self.augment)
        x = x.expand(3, -1, -1)
        stats = NORMALIZATIONS[self.normalize]
        if stats is not None:
            mean, std = (torch.tensor(s).view(3, 1, 1) for s in stats)
            x = (x - mean) / std
        elif self.normalize == "zscore":
            x = (x - x.mean()) / (x.std() + 1e-6)
        if self.csi is not None:
            return x.contiguous(), self.targets[i], self.csi[i]
        return x.contiguous(), self.targets[i]


def augment_image(x: torch.Tensor, rng: np.random.Generator, rotate: float = 5.0, translate: float = 0.05,
                  scale: tuple[float, float] = (0.95, 1.05), brightness: float = 0.1,
                  contrast: float = 0.1) -> torch.Tensor:
    """Light augmentation of a [1, S, S] image in [0, 1]: small affine jitter, brightness and contrast.

    No horizontal flip: it would swap the right and left zones.
    """
    from torchvision.transforms.v2 import functional as F

    size = x.shape[-1]
    shift = [int(round(rng.uniform(-translate, translate) * size)) for _ in range(2)]
    x = F.affine(x, angle=float(rng.uniform(-rotate, rotate)), translate=shift,
                 scale=float(rng.uniform(*scale)), shear=[0.0, 0.0], interpolation=F.InterpolationMode.BILINEAR)
    mean = x.mean()
    x = (x - mean) * float(rng.uniform(1 - contrast, 1 + contrast)) + mean
    return (x + float(rng.uniform(-brightness, brightness))).clamp(0, 1)


class CSIDataModule(SplitDataModule):
    """Six-zone CSI data with a seeded, stratified 70/15/15 split (by patient when a patient column exists).

    The patient column is ``patient_column`` when set (then it must exist), else the first of
    :data:`PATIENT_COLUMNS` the CSV has; without one the run stops, since images of one patient would land in
    both train and test: ``split_by=image`` opts in to that per-image split (with a WARNING). The split
    depends on ``split_seed`` only, so ``-m seed=1,2,3`` keeps the test images.

    ``synthesize`` (e.g. ``{images: 600, seed: 0}``) writes a synthetic cohort at ``root`` when it
    is absent (:mod:`bioexp.data.synth.csi`), so a first run needs no data.
    """

    def __init__(self, root: str, labels_file: str = "labels.csv", images_dir: str = "images",
                 patient_column: str | None = None, split_by: str = "patient", image_size: int = 224, normalize: str = "imagenet",
                 augment: dict[str, Any] | None = None, split: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 split_seed: int = 0, batch_size: int = 32, num_workers: int = 4, pin_memory: bool = True,
                 cache_dir: str | None = None, decode_workers: int = 2, max_unreadable: float = 0.05,
                 synthesize: dict | None = None, seed: int = 0) -> None:
        super().__init__()
        if normalize not in NORMALIZATIONS:
            raise BioexpError(f"unknown data.normalize {normalize!r}; choose one of {', '.join(NORMALIZATIONS)}")
        if split_by not in ("patient", "image"):
            raise BioexpError(f"data.split_by is patient or image, got {split_by!r}")
        if not 0 <= max_unreadable <= 1:
            raise BioexpError(f"data.max_unreadable is a fraction of the labelled images (0-1), got {max_unreadable}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser().resolve()  # one spelling: the cache key hashes the image paths
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".bioexp_cache"
        self._table: pd.DataFrame | None = None
        self._cache: ArrayCache | None = None
        self.skipped: dict[str, str] = {}

    @property
    def dims(self) -> dict[str, int]:
        return {"num_zones": len(ZONES), "num_classes": UNKNOWN + 1}

    def _ensure_root(self) -> None:
        hp = self.hparams
        if (self.root / hp.labels_file).is_file() or not hp.synthesize:
            return
        from bioexp.data.synth.csi import generate_csi

        log.info("No CSI data at %s: writing a synthetic cohort (%s)", self.root, hp.synthesize)
        generate_csi(self.root, **hp.synthesize)

    def prepare_data(self) -> None:
        self._images_cache()

    def table(self) -> pd.DataFrame:
        """The usable rows (valid scores, readable image), in cache order."""
        self._images_cache()
        assert self._table is not None
        return self._table

    def _images_cache(self) -> ArrayCache:
        if self._cache is not None:
            return self._cache
        hp = self.hparams
        self._ensure_root()
        labels_path = self.root / hp.labels_file
        if not labels_path.is_file():
            raise DataNotFoundError(f"CSI labels not found: {labels_path}; "
                                    + HINT.format(labels=hp.labels_file, images=hp.images_dir, root=self.root))
        table, skipped = read_labels(labels_path)
        for file_id, reason in skipped.items():
            log.warning("CSI: skipping labels row %s: %s", file_id, reason)
        images_dir = self.root / hp.images_dir
        ids = table["FileID"].tolist()
        fingerprint = file_fingerprint([labels_path, *(images_dir / i for i in ids)])
        cache = cached_stack(self.cache_dir, f"csi-v2-{hp.image_size}px", ids, (hp.image_size, hp.image_size),
                             partial(decode_image, str(images_dir), hp.image_size), fingerprint, hp.decode_workers,
                             item_errors=image_errors())
        for file_id, reason in cache.errors.items():
            log.warning("CSI: skipping image %s: %s", file_id, reason)
        self.skipped = {**skipped, **cache.errors}
        total = len(ids) + len(skipped)
        if self.skipped:
            log.warning("CSI: skipped %d of %d labelled images (%d bad label rows, %d missing or unreadable images)",
                        len(self.skipped), total, len(skipped), len(cache.errors))
        if len(cache.errors) > hp.max_unreadable * max(len(ids), 1):
            raise BioexpError(f"{len(cache.errors)} of {len(ids)} images in {images_dir} are missing or unreadable "
                              f"(more than data.max_unreadable={hp.max_unreadable}; e.g. "
                              f"{next(iter(cache.errors.values()))}); see the log for each, fix them or raise "
                              "data.max_unreadable")
        self._table = table.assign(row=np.arange(len(table)))[cache.valid].reset_index(drop=True)
        if self._table.empty:
            raise BioexpError(f"no usable image in {self.root}: {total} rows skipped; "
                              + HINT.format(labels=hp.labels_file, images=hp.images_dir, root=self.root))
        if CSI_COLUMN in self._table.columns:  # does the cohort's csi mean what the metrics assume?
            gap = np.abs(csi_average(self._table[list(ZONES)].to_numpy()) - self._table[CSI_COLUMN].to_numpy())
            log.info("CSI: the CSV's %s column vs the mean of the gradable zone scores: %d of %d images differ by "
                     "more than 0.05 (%d blank)", CSI_COLUMN, int(np.sum(gap > 0.05)), len(gap),
                     int(self._table[CSI_COLUMN].isna().sum()))
        self._cache = cache
        return cache

    def patient_column(self, table: pd.DataFrame) -> str | None:
        """The column grouping images by patient (see the class docstring); None = per-image split."""
        hp = self.hparams
        if hp.split_by == "image":
            warn_fallback("CSI: data.split_by=image: splitting per image, so one patient's images may be in train "
                          "and test")
            return None
        name = hp.patient_column
        if name is not None:
            if name not in table.columns:
                raise BioexpError(f"data.patient_column={name!r} is not a column of {hp.labels_file} "
                                  f"(columns: {', '.join(table.columns)}); set it to the patient identifier column")
            return name
        found = next((c for c in PATIENT_COLUMNS if c in table.columns), None)
        if found is None:
            raise BioexpError(f"CSI: no patient column ({', '.join(PATIENT_COLUMNS)}) in {hp.labels_file}: set "
                              "data.patient_column=<column>, or data.split_by=image to split per image (one "
                              "patient's images may then be in train and test)")
        return found

    def split_rows(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """Cache rows, zone targets ``[N, 6]`` and the CSV's ``csi`` (None without that column) of each split."""
        hp = self.hparams
        table = self.table()
        targets = table[list(ZONES)].to_numpy()
        column = self.patient_column(table)
        groups = table[column].to_numpy() if column else None
        split = split_indices(targets, groups, tuple(hp.split), hp.split_seed)
        csi = table[CSI_COLUMN].to_numpy(np.float32) if CSI_COLUMN in table.columns else None
        return {name: (table["row"].to_numpy()[idx], targets[idx], None if csi is None else csi[idx])
                for name, idx in split.items()}

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        path = self._images_cache().path
        self.datasets = {name: CSIDataset(path, rows, y, hp.normalize, hp.augment if name == "train" else None, csi)
                         for name, (rows, y, csi) in self.split_rows().items()}
        for name, ds in self.datasets.items():
            if len(ds) == 0:
                raise BioexpError(f"the {name} split is empty ({len(self.table())} usable images); "
                                  "add images or change data.split")

