"""Cardiac ultrasound probe-guidance transitions (Cardiac Dreamer's format), split by patient.

``<root>/<patient>/transitions_dataset.json`` is a list of transitions: ``ft1_image_path`` and
``ft2_image_path`` (relative to the patient folder; Windows backslashes accepted), ``at1_6dof`` (the
action from frame t1 to the target view), ``action_change_6dof`` (the probe's move from t1 to t2) and
``at2_6dof`` (t2 to the target), each ``[x, y, z, roll, pitch, yaw]`` in mm and ``angle_unit``
(degrees as the public data, or radians as the published docs say; radians are converted to degrees
on reading); frame ids are optional. Images are grayscale PNGs, resized to ``image_size`` and decoded
once into a uint8 memmap (:mod:`bioexp.data.cache`); frames that are missing or unreadable are found
then, their transitions skipped and counted, and more than ``max_missing_frac`` of them fails the run
before training.

The labels follow one of two conventions (``se3``: ``T(at1) = T(move) T(at2)`` as rigid transforms,
the published model's; ``additive``: ``at2 = at1 + move`` as 6-vectors, the public data's, where
``at`` acts like the probe's offset from the target); :func:`label_convention` measures which one,
and ``check()`` compares it and the rotation unit with the configuration.

Splits are by patient, never by sample: automatic 70/15/15 (seeded by ``split_seed`` alone, so
runs with different ``seed`` keep their test patients; balanced by sample count from 6 patients on),
manual lists, or fold ``fold`` of a ``num_folds`` patient cross-validation. Action
normalisation statistics come from the training patients only; they reach the model through
``dims`` (so they are saved in its checkpoint) and ``statistics()`` (``dataset_stats.json``).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from bioexp import se3
from bioexp.data.base import SplitDataModule
from bioexp.data.cache import ArrayCache, cached_stack, file_fingerprint
from bioexp.data.sampling import item_rng
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

JSON_NAME = "transitions_dataset.json"
PATH_KEYS = ("ft1_image_path", "ft2_image_path")
VECTOR_KEYS = ("at1_6dof", "action_change_6dof", "at2_6dof")
SPLITS = ("train", "val", "test")
BALANCED_FROM = 6  # patients; fewer are split by patient count
COMPOSITIONS = ("se3", "additive")
ANGLE_UNITS = ("deg", "rad")
# A convention "holds" when its median gap is below both (labels are written to ~6 decimals; a tracker's
# exact arithmetic leaves 1e-12). Real inconsistencies are millimetres (the issue measured 1.22 mm).
HOLDS_MM, HOLDS_DEG = 1e-3, 1e-3
SYNTH_HINT = ("write a synthetic one with `python -m bioexp.data.synth cardiac_us --out {root}` "
              "or use `data=cardiac_us_synth`")


@dataclass
class Patient:
    """One patient's transitions: absolute image paths and ``(n, 6)`` float32 action arrays."""

    name: str
    image_t1: list[Path]
    image_t2: list[Path]
    at1: np.ndarray
    change: np.ndarray
    at2: np.ndarray

    def __len__(self) -> int:
        return len(self.image_t1)


def image_path(folder: Path, relative: str) -> Path:
    """``relative`` (POSIX or Windows separators) under the patient ``folder``."""
    return folder.joinpath(*PureWindowsPath(relative).parts)


def read_patient(folder: str | Path) -> Patient:
    """Parse and validate one patient folder's JSON; every problem names the file and the entry."""
    folder = Path(folder)
    path = folder / JSON_NAME
    if not path.is_file():
        raise DataNotFoundError(f"{path} is missing; every patient folder needs a {JSON_NAME}")
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BioexpError(f"{path} is not valid JSON ({exc}); fix or regenerate it") from exc
    if not isinstance(rows, list) or not rows:
        raise BioexpError(f"{path} must hold a non-empty JSON list of transitions")
    images: dict[str, list[Path]] = {k: [] for k in PATH_KEYS}
    vectors: dict[str, list[list[float]]] = {k: [] for k in VECTOR_KEYS}
    for i, row in enumerate(rows):
        where = f"{path} entry {i}"
        if not isinstance(row, dict):
            raise BioexpError(f"{where} is not an object with {', '.join(PATH_KEYS + VECTOR_KEYS)}")
        missing = [k for k in PATH_KEYS + VECTOR_KEYS if k not in row]
        if missing:
            raise BioexpError(f"{where} lacks {', '.join(missing)}")
        for key in PATH_KEYS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise BioexpError(f"{where}: {key} must be a non-empty path relative to {folder}")
            images[key].append(image_path(folder, row[key].strip()))
        for key in VECTOR_KEYS:
            value = row[key]
            if not (isinstance(value, list) and len(value) == 6
                    and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                            for v in value)):
                raise BioexpError(f"{where}: {key} must be 6 finite numbers [x, y, z, roll, pitch, yaw], got {value!r}")
            vectors[key].append(value)
    arrays = {k: np.asarray(v, dtype=np.float32) for k, v in vectors.items()}
    return Patient(folder.name, images["ft1_image_path"], images["ft2_image_path"], arrays["at1_6dof"],
                   arrays["action_change_6dof"], arrays["at2_6dof"])


def find_patients(root: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that hold a transitions JSON."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"cardiac data not found: {root} does not exist; " + SYNTH_HINT.format(root=root))
    names = sorted(p.name for p in root.iterdir() if (p / JSON_NAME).is_file())
    if not names:
        raise DataNotFoundError(f"no patient folder with a {JSON_NAME} under {root}; " + SYNTH_HINT.format(root=root))
    return names


def greedy_partition(order: Sequence[str], counts: dict[str, int], fractions: Sequence[float]) -> list[list[str]]:
    """Partition patients into ``len(fractions)`` groups whose sample counts follow ``fractions``.

    The first patients of ``order`` (seeded) open one group each, so no group is empty; the rest go,
    largest first, to the group furthest below its share of all samples.
    """
    if len(order) < len(fractions):
        raise BioexpError(f"{len(order)} patient(s) cannot fill {len(fractions)} patient groups")
    total = sum(counts[n] for n in order)
    groups = [[name] for name in order[: len(fractions)]]
    sizes = [counts[name] for name in order[: len(fractions)]]
    for name in sorted(order[len(fractions):], key=lambda n: -counts[n]):  # stable: ties keep the seeded order
        deficits = [f * total - s for f, s in zip(fractions, sizes, strict=True)]
        best = int(np.argmax(deficits))
        groups[best].append(name)
        sizes[best] += counts[name]
    return [sorted(g) for g in groups]


def auto_split(counts: dict[str, int], ratios: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Seeded train/val/test patient split: balanced by sample count from 6 patients, else by patients."""
    names = sorted(counts)
    if len(names) < 3:
        raise BioexpError(f"an automatic split needs at least 3 patients, found {len(names)} ({', '.join(names)}); "
                          "add patients or give data.train_patients/val_patients/test_patients")
    if len(ratios) != 3 or min(ratios) <= 0:
        raise BioexpError(f"data.split_ratios must be 3 positive numbers (train, val, test), got {list(ratios)}")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    fractions = [r / sum(ratios) for r in ratios]
    if len(names) >= BALANCED_FROM:
        return dict(zip(SPLITS, greedy_partition(order, counts, fractions), strict=True))
    n_val, n_test = (max(1, round(f * len(names))) for f in fractions[1:])
    n_train = len(names) - n_val - n_test
    if n_train < 1:
        n_val, n_train = n_val - 1, 1
    cuts = np.cumsum([n_train, n_val])
    return {s: sorted(part) for s, part in zip(SPLITS, np.split(np.asarray(order), cuts), strict=True)}


def kfold_split(counts: dict[str, int], num_folds: int, fold: int, ratios: Sequence[float],
                seed: int) -> dict[str, list[str]]:
    """Fold ``fold``: its patient group is the test set; the others split train/val by ``ratios[:2]``."""
    if not 0 <= fold < num_folds:
        raise BioexpError(f"data.fold must be in 0..{num_folds - 1} (data.num_folds={num_folds}), got {fold}")
    names = sorted(counts)
    if len(names) < num_folds + 2:
        raise BioexpError(f"{num_folds}-fold cross-validation needs at least {num_folds + 2} patients, "
                          f"found {len(names)}; lower data.num_folds")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    groups = greedy_partition(order, counts, [1 / num_folds] * num_folds)
    rest = [n for n in order if n not in groups[fold]]
    train, val = greedy_partition(rest, counts, [ratios[0] / sum(ratios[:2]), ratios[1] / sum(ratios[:2])])
    return {"train": train, "val": val, "test": groups[fold]}


def manual_split(names: Sequence[str], lists: dict[str, Sequence[str] | None]) -> dict[str, list[str]]:
    """User-given patient lists, checked: all three given, every name exists, no patient in two splits."""
    if any(not lists[s] for s in SPLITS):
        raise BioexpError("manual splits need data.train_patients, data.val_patients and data.test_patients "
                          "(each a non-empty list)")
    unknown = sorted({n for s in SPLITS for n in lists[s]} - set(names))
    if unknown:
        raise BioexpError(f"unknown patient(s) {', '.join(unknown)}; available: {', '.join(names)}")
    split = {s: sorted(lists[s]) for s in SPLITS}
    check_disjoint(split)
    return split


def check_disjoint(split: dict[str, list[str]]) -> None:
    seen: dict[str, str] = {}
    for stage, names in split.items():
        for name in names:
            if name in seen:
                raise BioexpError(f"patient {name} is in both {seen[name]} and {stage}; a patient belongs to one split")
            seen[name] = stage


def action_stats(patients: Sequence[Patient]) -> dict[str, list[float]]:
    """Per-axis mean/std of the actions to the target (at1 and at2 pooled) and of the probe moves."""
    actions = np.concatenate([a for p in patients for a in (p.at1, p.at2)]).astype(np.float64)
    changes = np.concatenate([p.change for p in patients]).astype(np.float64)

    def rounded(x: np.ndarray) -> list[float]:
        return [round(float(v), 6) for v in x]

    return {"action_mean": rounded(actions.mean(0)), "action_std": rounded(np.maximum(actions.std(0), 1e-3)),
            "change_mean": rounded(changes.mean(0)), "change_std": rounded(np.maximum(changes.std(0), 1e-3))}


def read_gray(path: Path, size: int) -> np.ndarray:
    """A grayscale PNG as ``size`` x ``size`` uint8 (bilinear resize); PIL's own errors (all OSErrors) pass."""
    with Image.open(path) as image:
        return np.array(image.convert("L").resize((size, size), Image.Resampling.BILINEAR))


def load_image(path: Path, size: int) -> np.ndarray:
    """:func:`read_gray`, with a missing or unreadable file as a one-line error."""
    try:
        return read_gray(path, size)
    except FileNotFoundError as exc:
        raise DataNotFoundError(f"image {path} is missing; check the paths in its {JSON_NAME}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise BioexpError(f"cannot read image {path} ({exc}); replace or remove the transition") from exc


def augment_appearance(x: torch.Tensor, rng: np.random.Generator, gain: float = 0.2, gamma: float = 0.2,
                       blur: float = 1.0, noise: float = 0.03) -> torch.Tensor:
    """Acquisition changes that keep the geometry, on a ``[1, S, S]`` image in [0, 1]: overall gain and
    gamma (gain/compression settings), Gaussian blur up to ``blur`` pixels (focus) and additive noise.

    No flips, shifts or rotations: where the anatomy sits in the image is what encodes the probe pose.
    """
    from torchvision.transforms.v2 import functional as F

    x = x.clamp(0, 1) ** float(np.exp(rng.uniform(-gamma, gamma))) * float(rng.uniform(1 - gain, 1 + gain))
    sigma = float(rng.uniform(0.0, blur))
    if sigma > 0.1:
        x = F.gaussian_blur(x, kernel_size=2 * int(np.ceil(3 * sigma)) + 1, sigma=sigma)
    noisy = x + torch.from_numpy(rng.normal(0.0, noise, x.shape).astype(np.float32))
    return noisy.clamp(0, 1)


class TransitionDataset(Dataset):
    """``(frame t1, frame t2, actions)`` items in physical units; the task normalises with saved stats.

    Frames are rows of the uint8 memmap at ``path`` (opened lazily, once per loader worker); ``rows``
    gives each patient's ``(t1 row, t2 row)`` per transition.
    """

    def __init__(self, path: str | Path, patients: Sequence[Patient], rows: dict[str, np.ndarray],
                 augment: dict[str, float] | None = None) -> None:
        self.path, self.augment = Path(path), augment
        self.patients = list(patients)
        self.rows = rows
        self.index = [(k, i) for k, p in enumerate(self.patients) for i in range(len(p))]
        self._frames: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_frames": None}

    def _pair(self, rows: np.ndarray) -> torch.Tensor:
        """Frames t1 and t2 as ``(2, 1, S, S)`` floats in [0, 1]: one memmap read, one conversion."""
        if self._frames is None:
            self._frames = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(self._frames[rows]).unsqueeze(1).to(torch.float32).div_(255.0)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        index, item_seed = item if isinstance(item, tuple) else (item, None)  # EpochSampler: (index, item seed)
        k, i = self.index[index]
        patient = self.patients[k]
        t1, t2 = self._pair(self.rows[patient.name][i])
        if self.augment:
            rng = item_rng(item_seed)
            t1, t2 = (augment_appearance(t, rng, **self.augment) for t in (t1, t2))
        return {"image_t1": t1, "image_t2": t2,
                "at1": torch.from_numpy(patient.at1[i]), "action_change": torch.from_numpy(patient.change[i]),
                "at2": torch.from_numpy(patient.at2[i]), "patient": patient.name, "index": index}


class CardiacUSDataModule(SplitDataModule):
    """Patient-level splits of Cardiac Dreamer transitions (see the module docstring).

    ``synthesize`` (e.g. ``{patients: 24, transitions: 40, size: 224, seed: 0}``) writes synthetic data at
    ``root`` when it is missing or empty, so a first run needs no download.
    """

    def __init__(self, root: str, image_size: int = 224, batch_size: int = 16, num_workers: int = 4,
                 persistent_workers: bool = True, pin_memory: bool = False,
                 split_ratios: Sequence[float] = (0.7, 0.15, 0.15), train_patients: Sequence[str] | None = None,
                 val_patients: Sequence[str] | None = None, test_patients: Sequence[str] | None = None,
                 fold: int | None = None, num_folds: int = 5, seed: int = 0, split_seed: int = 0,
                 angle_unit: str = "deg", max_missing_frac: float = 0.05, cache_dir: str | None = None,
                 decode_workers: int = 2, synthesize: dict | None = None,
                 augment: dict[str, float] | None = None) -> None:
        super().__init__()
        unknown = set(augment or {}) - set(inspect.signature(augment_appearance).parameters) - {"x", "rng"}
        if unknown:
            raise BioexpError(f"unknown data.augment keys {sorted(unknown)}; choose from gain, gamma, blur, noise")
        if angle_unit not in ANGLE_UNITS:
            raise BioexpError(f"data.angle_unit must be one of {', '.join(ANGLE_UNITS)}, got {angle_unit!r}")
        self.save_hyperparameters()
        self.root = Path(root).expanduser().resolve()  # one spelling: the cache key hashes the frame paths
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / ".bioexp_cache"
        self._labelled: dict[str, Patient] | None = None
        self._patients: dict[str, Patient] | None = None
        self.frame_rows: dict[str, np.ndarray] = {}
        self._cache: ArrayCache | None = None
        self._split: dict[str, list[str]] | None = None
        self.skipped: dict[str, str] = {}
        self.datasets: dict[str, TransitionDataset] = {}

    # -- patients and splits ------------------------------------------------------------------
    def _ensure_root(self) -> None:
        empty = not self.root.exists() or (self.root.is_dir() and not any(self.root.iterdir()))
        if not empty or not self.hparams.synthesize:  # never write over a folder that holds anything
            return
        from bioexp.data.synth.cardiac_us import generate_cardiac_us

        log.info("No cardiac data at %s: writing a synthetic set (%s)", self.root, self.hparams.synthesize)
        generate_cardiac_us(self.root, **self.hparams.synthesize, overwrite=self.root.exists())

    @property
    def labelled(self) -> dict[str, Patient]:
        """Every patient's transitions as the JSON lists them (rotations in degrees); no image is read."""
        if self._labelled is None:
            self._ensure_root()
            self._labelled = {name: in_degrees(read_patient(self.root / name), self.hparams.angle_unit)
                              for name in find_patients(self.root)}
        return self._labelled

    @property
    def patients(self) -> dict[str, Patient]:
        """The usable transitions: those whose two frames decoded (see :meth:`frame_cache`)."""
        if self._patients is None:
            self.frame_cache()
        assert self._patients is not None
        return self._patients

    def frame_cache(self) -> ArrayCache:
        """Decode every frame once into the uint8 memmap; drop (and count) transitions with a bad frame."""
        if self._cache is not None:
            return self._cache
        hp = self.hparams
        labelled = self.labelled
        frames = list(dict.fromkeys(p for patient in labelled.values()
                                    for p in (*patient.image_t1, *patient.image_t2)))
        items = [str(p) for p in frames]
        cache = cached_stack(self.cache_dir, f"cardiac-{hp.image_size}px-u8", items, (hp.image_size, hp.image_size),
                             partial(decode_frame, hp.image_size), file_fingerprint(frames), hp.decode_workers,
                             dtype=np.uint8)
        row_of = {p: i for i, p in enumerate(frames)}
        patients, self.frame_rows, dropped = {}, {}, 0
        for name, patient in labelled.items():
            rows = np.array([[row_of[a], row_of[b]] for a, b in zip(patient.image_t1, patient.image_t2, strict=True)])
            keep = cache.valid[rows].all(axis=1)
            dropped += int((~keep).sum())
            if keep.any():
                patients[name] = _subset(patient, keep)
                self.frame_rows[name] = rows[keep]
        total = sum(len(p) for p in labelled.values())
        self.skipped = dict(cache.errors)
        if dropped:
            examples = "; ".join(list(cache.errors.values())[:2])
            empty = sorted(set(labelled) - set(patients))
            log.warning("Cardiac: %d of %d frames missing or unreadable: skipping %d of %d transitions%s (%s)",
                        len(cache.errors), len(frames), dropped, total,
                        f", and patients {', '.join(empty)} entirely" if empty else "", examples)
        if dropped > hp.max_missing_frac * total:
            raise BioexpError(f"{dropped} of {total} transitions ({dropped / total:.1%}) have a missing or unreadable "
                              f"frame, more than data.max_missing_frac={hp.max_missing_frac}; e.g. "
                              f"{next(iter(cache.errors.values()))}; fix the frames or raise data.max_missing_frac")
        self._patients, self._cache = patients, cache
        return cache

    def split_of(self, counts: dict[str, int]) -> dict[str, list[str]]:
        """Patient names per split for these patients, by the mode the config chose (manual, fold, auto)."""
        hp = self.hparams
        manual = {s: getattr(hp, f"{s}_patients") for s in SPLITS}
        if any(manual.values()):
            if hp.fold is not None:
                raise BioexpError("give either manual patient lists or data.fold, not both")
            split = manual_split(sorted(counts), manual)
        elif hp.fold is not None:
            split = kfold_split(counts, hp.num_folds, hp.fold, hp.split_ratios, hp.split_seed)
        else:
            split = auto_split(counts, hp.split_ratios, hp.split_seed)
        check_disjoint(split)
        return split

    @property
    def split(self) -> dict[str, list[str]]:
        """Patient names per split (of the usable transitions)."""
        if self._split is None:
            self._split = self.split_of({name: len(p) for name, p in self.patients.items()})
        return self._split

    @property
    def action_stats(self) -> dict[str, list[float]]:
        return action_stats([self.patients[n] for n in self.split["train"]])

    @property
    def dims(self) -> dict[str, Any]:
        return {"image_size": self.hparams.image_size, "action_stats": self.action_stats}

    def statistics(self) -> dict[str, Any]:
        """Everything ``dataset_stats.json`` records: splits, counts, ratios, stats, the leakage check."""
        split = self.split
        samples = {s: sum(len(self.patients[n]) for n in names) for s, names in split.items()}
        total = sum(samples.values())
        members = [set(names) for names in split.values()]
        overlap = sorted(set.union(*[a & b for i, a in enumerate(members) for b in members[i + 1:]]))
        hp = self.hparams
        mode = "manual" if hp.train_patients else f"fold {hp.fold} of {hp.num_folds}" if hp.fold is not None else "auto"
        return {"root": str(self.root), "mode": mode, "split_seed": hp.split_seed, "patients": split,
                "samples": samples, "sample_ratios": {s: round(n / total, 4) for s, n in samples.items()},
                "samples_per_patient": {n: len(p) for n, p in self.patients.items()},
                "patient_overlap": overlap, "no_patient_leakage": not overlap, "action_stats": self.action_stats,
                "image_size": hp.image_size, "angle_unit_in_files": hp.angle_unit,
                "skipped_frames": self.skipped}

    def preview(self, stage: str, count: int = 3) -> list[tuple[str, np.ndarray]]:
        """``count`` t1 frames of ``stage`` (one per patient first, spread over each patient) for the figure."""
        names = self.split[stage]
        per_patient = math.ceil(count / len(names))
        picks = [(names[i % len(names)], i // len(names)) for i in range(count)]
        return [(n, load_image(self.patients[n].image_t1[k * len(self.patients[n]) // per_patient],
                               self.hparams.image_size)) for n, k in picks]

    # -- Lightning hooks ----------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.frame_cache()  # missing frames are counted, and too many fail, here: before any training

    def setup(self, stage: str | None = None) -> None:
        path = self.frame_cache().path
        self.datasets = {s: TransitionDataset(path, [self.patients[n] for n in names], self.frame_rows,
                                              self.hparams.augment if s == "train" else None)
                         for s, names in self.split.items()}

    # -- pre-training check -------------------------------------------------------------------
    def check(self, composition: str | None = None) -> list[tuple[bool, str]]:
        """The training guide's pre-training checklist, as ``(passed, message)`` lines; reads, never writes.

        Per patient: the JSON, every frame, which label convention the actions follow (compared with
        ``composition``, the model's, when given) and the rotation unit (compared with ``data.angle_unit``).
        """
        hp = self.hparams
        results: list[tuple[bool, str]] = []
        if not self.root.is_dir():
            return [(False, f"data directory {self.root} does not exist; " + SYNTH_HINT.format(root=self.root))]
        folders = sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        results.append((bool(folders), f"data directory {self.root} has {len(folders)} patient folder(s)"))
        counts = {}
        for folder in folders:
            try:
                patient = read_patient(folder)
            except BioexpError as exc:
                results.append((False, str(exc)))
                continue
            counts[folder.name] = len(patient)
            broken = [str(p) for p in dict.fromkeys(patient.image_t1 + patient.image_t2) if not _readable(p)]
            results.append((not broken, f"{folder.name}: {len(patient)} transitions, 6-DOF vectors valid, "
                            + (f"{len(broken)} image(s) missing or unreadable, e.g. {broken[0]}" if broken
                               else "all images readable")))
            results += _convention_lines(patient, composition, hp.angle_unit)
        if len(counts) == len(folders):  # the split needs every folder readable
            try:
                split = self.split_of(counts)
                results.append((True, "patient split: " + "; ".join(f"{s} {', '.join(n)}" for s, n in split.items())))
            except BioexpError as exc:
                results.append((False, f"patient split: {exc}"))
        free_gb = shutil.disk_usage(self.root).free / 1e9
        results.append((free_gb > 2.0, f"{free_gb:.1f} GB free on the data disk (a run writes about 0.5-2 GB)"))
        gpu = torch.cuda.is_available()
        results.append((True, f"GPU: {torch.cuda.get_device_name(0)}" if gpu else "GPU: none, training runs on CPU"))
        return results


def _convention_lines(patient: Patient, composition: str | None, angle_unit: str) -> list[tuple[bool, str]]:
    """The check's label-convention and rotation-unit lines for one patient (raw JSON values)."""
    unit, largest = angle_unit_of(patient)
    unit_ok = unit == angle_unit
    lines = [(unit_ok, f"{patient.name}: rotations up to {largest:.3g} in magnitude: {unit} (radians stay within "
              f"+-pi); data.angle_unit={angle_unit}" + ("" if unit_ok else f": set data.angle_unit={unit}"))]
    holds, gaps = label_convention(in_degrees(patient, unit))
    measured = ", ".join(f"{c} {mm:.3g} mm / {deg:.3g} deg" for c, (mm, deg) in gaps.items())
    message = (f"{patient.name}: labels vs se3 (T(at1) = T(move) T(at2)) and additive (at2 = at1 + move), "
               f"median gap {measured}: ")
    if not holds:
        return [*lines, (False, message + "neither holds (labels inconsistent); check how at1, action_change "
                         "and at2 were computed")]
    message += " and ".join(holds) + (" holds" if len(holds) == 1 else " hold (moves without rotation)")
    if composition is None:
        return [*lines, (True, message)]
    if composition in holds:
        return [*lines, (True, message + f"; model.composition={composition} matches")]
    return [*lines, (False, message + f"; model.composition={composition} does not: set model.composition={holds[0]}")]


def decode_frame(size: int, path: str) -> np.ndarray:
    """One frame for the cache: ``size`` x ``size`` uint8 (picklable with :func:`functools.partial`); a file
    that cannot be read raises an OSError, which the cache records as that frame's reason."""
    return read_gray(Path(path), size)


def _subset(patient: Patient, keep: np.ndarray) -> Patient:
    """The transitions of ``patient`` where ``keep`` is true."""
    pick = np.flatnonzero(keep)
    return replace(patient, image_t1=[patient.image_t1[i] for i in pick], image_t2=[patient.image_t2[i] for i in pick],
                   at1=patient.at1[keep], change=patient.change[keep], at2=patient.at2[keep])


def _readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (OSError, UnidentifiedImageError):
        return False


def in_degrees(patient: Patient, angle_unit: str) -> Patient:
    """``patient`` with its rotations in degrees (converted from radians when ``angle_unit`` is ``rad``)."""
    if angle_unit == "deg":
        return patient
    scale = np.array([1, 1, 1] + [180 / np.pi] * 3, dtype=np.float32)
    return replace(patient, at1=patient.at1 * scale, change=patient.change * scale, at2=patient.at2 * scale)


def composition_gaps(patient: Patient, composition: str) -> tuple[float, float]:
    """Median translation (mm) and rotation (degrees) gap between ``at1`` and ``at1`` rebuilt from ``move``, ``at2``.

    ``patient`` in degrees. ``additive``: ``at2 - move`` as 6-vectors (largest angle difference);
    ``se3``: ``T(move) T(at2)`` as 4x4 transforms (geodesic angle).
    """
    change, at2, at1 = (torch.from_numpy(a).double() for a in (patient.change, patient.at2, patient.at1))
    if composition == "additive":
        composed = at2 - change
        rotation = (composed[:, 3:] - at1[:, 3:]).abs().amax(dim=1)
    else:
        composed = se3.compose(change, at2)
        rotation = se3.rotation_angle_deg(composed, at1)
    translation = (composed[:, :3] - at1[:, :3]).norm(dim=1)
    return float(translation.median()), float(rotation.median())


def label_convention(patient: Patient) -> tuple[list[str], dict[str, tuple[float, float]]]:
    """The compositions that ``patient``'s labels (in degrees) follow, and each one's gaps."""
    gaps = {c: composition_gaps(patient, c) for c in COMPOSITIONS}
    return [c for c, (mm, deg) in gaps.items() if mm < HOLDS_MM and deg < HOLDS_DEG], gaps


def angle_unit_of(patient: Patient) -> tuple[str, float]:
    """``deg`` or ``rad`` as the raw rotations say, and their largest magnitude.

    Euler angles in radians stay within +-pi; any larger one is degrees. The converse is a judgement:
    a cohort whose every rotation (to the target and per move) is under 3.14 degrees would be
    implausible for probe guidance, so all-within-pi is read as radians.
    """
    largest = float(max(np.abs(a[:, 3:]).max() for a in (patient.at1, patient.change, patient.at2)))
    return ("deg" if largest > math.pi + 1e-6 else "rad"), largest
