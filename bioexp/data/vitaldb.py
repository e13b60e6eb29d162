"""VitalDB biosignal windows: patient-level splits, where window files live, the datamodule and the CLI.

Cases are VitalDB ``.vital`` files or WFDB records (:mod:`bioexp.data.vitaldb_io`: each track at its own
rate, multi-segment records as one case); windows are built by :mod:`bioexp.data.vitaldb_windows` (worker
processes, per-case shards streamed into one memory-mapped ``.npy``).

Honest by construction: ``data=vitaldb`` never synthesises anything (only ``data=vitaldb_synth``, with a
WARNING); windows built from ``data.root`` live in ``<root>/.bioexp_windows/<fingerprint>/`` (a user cache
dir when the root is read-only), or in ``data.windows_dir`` when that holds no window files of someone
else; a user's window files are never written over. Splits are by patient (``clinical_data.csv`` at the
root, one level up, or ``data.clinical_csv``), validation is held out by case, and a missing test set is
an error unless ``data.test_on_val=true``.

CLI: ``python -m bioexp.data.vitaldb prepare-splits | build-windows [--shard i/n] | merge-windows`` (``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bioexp.data.base import SplitDataModule
from bioexp.data.vitaldb_io import (  # noqa: F401 - re-exported: the module's public names
    HR_TRACK,
    CaseError,
    Recording,
    build_index,
    case_files,
    read_case,
)
from bioexp.data.vitaldb_windows import (  # noqa: F401 - re-exported
    CHANNELS,
    WINDOWS,
    Windows,
    _case_fingerprint,
    bandpass,
    build_case_shards,
    build_windows,
    case_windows,
    check_channels,
    describe,
    merge,
    merge_shards,
    quality_gate,
    resample,
    settings_fingerprint,
    stored_fingerprint,
)
from bioexp.errors import BioexpError, DataNotFoundError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
MODES = ("full", "fasttrack")
CASE_SETS = ("all", "bis")  # bis: cases with a BIS/BIS track (from the case index)
CLINICAL = "clinical_data.csv"
HOME = ".bioexp_windows"
MARKER = ".bioexp_windows.json"  # in a data.windows_dir bioexp built: the settings it holds
HINT = ("point data.root at a folder of VitalDB cases (.vital files from https://vitaldb.net/dataset, or WFDB "
        "records), or use data=vitaldb_synth for synthetic ones")


# -- splits --------------------------------------------------------------------------------------
def find_clinical(root: Path, clinical_csv: str | Path | None = None) -> Path | None:
    """``clinical_csv`` (must exist), else ``clinical_data.csv`` at the root or one level up, else None."""
    if clinical_csv:
        path = Path(clinical_csv)
        if not path.is_file():
            raise DataNotFoundError(f"data.clinical_csv={path} not found; point it at VitalDB's {CLINICAL} "
                                    "(columns caseid, subjectid)")
        return path
    return next((p for p in (root / CLINICAL, root.parent / CLINICAL) if p.is_file()), None)


def patients(root: Path, case_ids: Sequence[str], clinical_csv: str | Path | None = None,
             mode: str = "fasttrack") -> dict[str, str]:
    """Case id -> patient id from the clinical table; without one, each case is its own patient (WARNING),
    and ``mode=full`` (a split others compare against) refuses."""
    path = find_clinical(root, clinical_csv)
    if path is None:
        if mode == "full":
            raise DataNotFoundError(f"split_mode=full needs {CLINICAL} (caseid, subjectid) to keep each patient's "
                                    f"cases in one split; none at {root} or {root.parent}: set data.clinical_csv")
        log.warning("No %s at %s or %s (data.clinical_csv): each case counts as its own patient, so two cases "
                    "of one patient can land in different splits", CLINICAL, root, root.parent)
        return {c: c for c in case_ids}
    import pandas as pd

    table = pd.read_csv(path, dtype=str)
    if not {"caseid", "subjectid"} <= set(table.columns):
        raise BioexpError(f"{path} lacks the columns caseid and subjectid (has {list(table.columns)[:8]})")
    known = dict(zip(table["caseid"].str.lstrip("0"), table["subjectid"], strict=True))
    unknown = [c for c in case_ids if c.lstrip("0") not in known]
    if unknown:
        log.warning("%d case(s) are not in %s (first: %s): each counts as its own patient", len(unknown), path,
                    unknown[:3])
    return {c: known.get(c.lstrip("0"), f"case:{c}") for c in case_ids}


def prepare_splits(root: Path, mode: str = "fasttrack", case_set: str = "all", seed: int = 0,
                   fractions: Sequence[float] = (0.7, 0.15, 0.15), fasttrack_cases: int = 70,
                   clinical_csv: str | Path | None = None, index: dict[str, Any] | None = None) -> dict[str, Any]:
    """Patient-level train/val/test case ids; ``fasttrack`` keeps ``fasttrack_cases`` cases (whole patients)."""
    if mode not in MODES:
        raise BioexpError(f"unknown split mode {mode!r}; choose one of {', '.join(MODES)}")
    if case_set not in CASE_SETS:
        raise BioexpError(f"unknown case set {case_set!r}; choose one of {', '.join(CASE_SETS)}")
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise BioexpError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    cases = sorted(case_files(root))
    if case_set == "bis":
        index = index if index is not None else build_index(root, None)
        cases = [c for c in cases if index.get(c, {}).get("bis")]
    if not cases:
        raise DataNotFoundError(f"no VitalDB cases (.vital or WFDB .hea) in {root}"
                                f"{' with a BIS/BIS track' if case_set == 'bis' else ''}; {HINT}")
    patient = patients(root, cases, clinical_csv, mode)
    rng = np.random.default_rng(seed)
    order = sorted(set(patient.values()))
    order = [order[i] for i in rng.permutation(len(order))]
    by_patient = {p: sorted(c for c in cases if patient[c] == p) for p in order}
    if mode == "fasttrack":
        kept, count = [], 0
        for p in order:
            if count >= fasttrack_cases:
                break
            kept.append(p)
            count += len(by_patient[p])
        order = kept
    total = sum(len(by_patient[p]) for p in order)
    bounds = np.cumsum(fractions)[:2] * total
    splits: dict[str, list[str]] = {s: [] for s in SPLITS}
    count = 0
    for k, p in enumerate(order):
        j = int(np.searchsorted(bounds, count, side="right"))
        # small cohorts: the last patients go to later splits that asked for cases but would get none
        empty = [i for i in range(j + 1, len(SPLITS)) if fractions[i] > 0 and not splits[SPLITS[i]]]
        if splits[SPLITS[j]] and len(order) - k <= len(empty):
            j = empty[0]
        splits[SPLITS[j]].extend(by_patient[p])
        count += len(by_patient[p])
    return {"mode": mode, "case_set": case_set, "seed": seed, "source": str(root),
            **{s: sorted(v) for s, v in splits.items()}}


def write_splits(splits: dict[str, Any], output: Path) -> Path:
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"splits_{splits['mode']}.json"
    path.write_text(json.dumps(splits, indent=2) + "\n")
    return path


def read_splits(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataNotFoundError(f"split file {path} not found; write it with "
                                "`python -m bioexp.data.vitaldb prepare-splits --cases-dir ... --output ...`")
    return json.loads(path.read_text())


def windows_fingerprint(root: Path, case_ids: Sequence[str], channels: Sequence[str],
                        channel_specs: dict[str, Any], options: dict[str, Any]) -> str:
    """Everything one split's windows depend on: the settings and each case file (size, mtime)."""
    settings = settings_fingerprint(channels, channel_specs, options)
    files = case_files(root)
    payload = [settings, [_case_fingerprint(files.get(c), settings) or f"missing:{c}" for c in case_ids]]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def held_out_by_case(windows: Windows, fraction: float, seed: int, what: str) -> tuple[Windows, Windows]:
    """(train, val): whole cases held out (seeded); files without case ids lose their last windows, with a
    WARNING, since which windows share a case cannot be checked."""
    if windows.case_ids is None or not len(windows.case_ids):
        n_val = max(1, round(fraction * len(windows)))
        log.warning("%s records no case ids (data/labels only): the patient split cannot be checked; holding out "
                    "its last %d windows for validation (a case may straddle the boundary)", what, n_val)
        rows = np.arange(len(windows))
        return windows.subset(rows[:-n_val]), windows.subset(rows[-n_val:])
    cases = np.unique(windows.case_ids)
    if len(cases) < 2:
        raise BioexpError(f"{what} holds windows of {len(cases)} case(s): too few to hold out whole cases for "
                          "validation; provide a val window file or more cases")
    n_val = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    val_cases = np.random.default_rng(seed).choice(cases, n_val, replace=False)
    is_val = np.isin(windows.case_ids, val_cases)
    log.info("No validation windows: holding out %d of %d cases of %s (%d windows)", n_val, len(cases), what,
             int(is_val.sum()))
    return windows.subset(np.flatnonzero(~is_val)), windows.subset(np.flatnonzero(is_val))


def _writable(path: Path) -> bool:
    """Whether bioexp may create ``path`` (or files in it)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK) and not _read_only_mount(probe)


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return True


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bioexp"


def _holds_files(directory: Path, files: Sequence[str]) -> bool:
    """Whether ``directory`` holds window files (any layout) or split files."""
    named = any((directory / f).exists() or (directory / f).with_suffix(".npy").exists() for f in files)
    return named or any(directory.glob("splits_*.json"))


# -- datamodule ----------------------------------------------------------------------------------
class VitalDBDataModule(SplitDataModule):
    """Windows of VitalDB cases for masked signal modeling and downstream fine-tuning.

    ``root``: a folder of cases; the index, splits and windows are built (in ``workers`` processes) when
    missing or stale. ``root: null``: the window files in ``windows_dir`` are used as they are. Windows are
    read by memory map. ``target: hr`` keeps windows with a monitor heart rate and batches ``(x, hr)``;
    ``max_train_windows`` draws a small labelled training set (seeded).
    """

    def __init__(self, root: str | None = None, windows_dir: str | None = None,
                 channels: Sequence[str] = ("PPG", "ECG"),
                 split_mode: str = "fasttrack", case_set: str = "all", split_seed: int = 0,
                 split_fractions: Sequence[float] = (0.7, 0.15, 0.15), fasttrack_cases: int = 70,
                 clinical_csv: str | None = None, channel_specs: dict[str, Any] | None = None,
                 windows: dict[str, Any] | None = None, train_file: str = "train_windows.npz",
                 val_file: str = "val_windows.npz", test_file: str = "test_windows.npz", val_fraction: float = 0.1,
                 test_on_val: bool = False, target: str | None = None, max_train_windows: int | None = None,
                 batch_size: int = 128, num_workers: int = 0, pin_memory: bool = False, seed: int = 0,
                 workers: int | None = None, synthesize: dict[str, Any] | None = None) -> None:
        super().__init__()
        if target not in (None, "hr"):
            raise BioexpError(f"unknown data.target {target!r}; use hr (monitor heart rate) or null")
        if root is None and windows_dir is None:
            raise BioexpError(f"data=vitaldb needs data.root (a folder of cases) or data.windows_dir (window files); "
                              f"{HINT}")
        self.save_hyperparameters()
        from omegaconf import OmegaConf

        plain = (lambda x: OmegaConf.to_container(x, resolve=True) if OmegaConf.is_config(x) else x)  # noqa: E731
        self.channel_specs = merge(CHANNELS, plain(channel_specs))
        self.options = merge(WINDOWS, plain(windows))
        check_channels(list(channels), self.channel_specs)
        self.root = Path(root) if root else None
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.datasets: dict[str, Any] = {}
        self._windows: dict[str, Windows] | None = None
        self._dir: Path | None = None

    @property
    def length(self) -> int:
        return round(self.options["seconds"] * self.options["fs"])

    @property
    def dims(self) -> dict[str, Any]:
        """Filled into ``???`` keys of the model config."""
        dims = {"in_channels": len(self.hparams.channels), "input_length": self.length,
                "channels": list(self.hparams.channels)}
        if self.hparams.target:
            hr = self.windows()["train"].hr
            dims.update(target_mean=float(hr.mean()), target_std=float(hr.std() + 1e-6))
        return dims

    # -- where files go ----------------------------------------------------------------------------
    def _files(self) -> tuple[str, str, str]:
        hp = self.hparams
        return hp.train_file, hp.val_file, hp.test_file

    def settings_key(self) -> str:
        """Fingerprint of every setting that changes the splits or windows (the folder name)."""
        hp = self.hparams
        payload = [settings_fingerprint(list(hp.channels), self.channel_specs, self.options), hp.split_mode,
                   hp.case_set, hp.split_seed, [float(f) for f in hp.split_fractions], hp.fasttrack_cases,
                   str(Path(hp.clinical_csv).resolve()) if hp.clinical_csv else None]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:12]

    def home(self) -> Path:
        """Where this root's index and windows live: ``<root>/.bioexp_windows`` or, for a read-only root, a
        folder of the user's cache named after the root."""
        assert self.root is not None
        home = self.root / HOME
        if _writable(home):
            return home
        name = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        cache = user_cache() / "vitaldb" / f"{self.root.name}-{name}"
        log.info("%s is read-only: VitalDB windows go to %s", self.root, cache)
        return cache

    def windows_dir(self) -> Path:
        """The folder of this run's window files (see the module docstring)."""
        if self._dir is not None:
            return self._dir
        hp = self.hparams
        if self.root is None:
            self._dir = Path(hp.windows_dir)
            return self._dir
        key = self.settings_key()
        if hp.windows_dir is None:
            self._dir = self.home() / key
            return self._dir
        given = Path(hp.windows_dir)
        marker = given / MARKER
        mine = json.loads(marker.read_text()).get("settings") if marker.is_file() else None
        if mine == key or mine is None and not _holds_files(given, self._files()):
            self._dir = given
        else:
            if hp.synthesize:
                raise BioexpError(f"{given} holds window files that are not synthetic windows of these settings, "
                                  "but data=vitaldb_synth would train on synthetic cases; to use your files: "
                                  f"data=vitaldb data.windows_dir={given} (data.root stays null)")
            self._dir = given / HOME / key
            log.warning("%s holds other window files (%s); they are kept as they are and the windows of %s go to %s",
                        given, "built for other settings" if mine else "yours", self.root, self._dir)
        return self._dir

    # -- building ----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.windows()

    def _ensure_cases(self) -> None:
        assert self.root is not None
        if self.root.is_dir() and case_files(self.root):
            return
        if not self.hparams.synthesize:
            raise DataNotFoundError(f"no VitalDB cases (.vital or WFDB .hea) in {self.root}; {HINT}")
        from bioexp.data.synth.vitaldb import generate_vitaldb

        log.warning("No VitalDB cases at %s: writing SYNTHETIC cases there (%s); this run trains on synthetic data",
                    self.root, self.hparams.synthesize)
        generate_vitaldb(self.root, **self.hparams.synthesize)

    def _build_missing(self) -> None:
        """(Re)write the index, the splits and every split's window file whose inputs changed."""
        hp = self.hparams
        assert self.root is not None
        out = self.windows_dir()
        out.mkdir(parents=True, exist_ok=True)
        if hp.windows_dir is not None and out == Path(hp.windows_dir):
            (out / MARKER).write_text(json.dumps({"settings": self.settings_key()}) + "\n")
        index = build_index(self.root, out.parent / "index.json" if out.parent.name == HOME else out / "index.json",
                            self.workers) if hp.case_set == "bis" else None
        splits = prepare_splits(self.root, hp.split_mode, hp.case_set, hp.split_seed, hp.split_fractions,
                                hp.fasttrack_cases, hp.clinical_csv, index)
        write_splits(splits, out)
        stale = {}
        for split, name in zip(SPLITS, self._files(), strict=True):
            stem = out / Path(name).with_suffix("")
            if not splits[split]:
                for suffix in (".npy", ".meta.npz"):
                    stem.with_suffix(suffix).unlink(missing_ok=True)  # our old file would no longer match
                continue
            fingerprint = windows_fingerprint(self.root, splits[split], hp.channels, self.channel_specs, self.options)
            if stored_fingerprint(stem) != fingerprint:
                stale[split] = (stem, fingerprint)
        # one pool for the cases of every stale split
        build_case_shards(self.root, [c for s in stale for c in splits[s]], hp.channels, self.channel_specs,
                          self.options, out / "shards", self.workers)
        for split, (stem, fingerprint) in stale.items():
            summary = merge_shards(out / "shards", splits[split], hp.channels, self.length, stem, fingerprint,
                                   settings_fingerprint(list(hp.channels), self.channel_specs, self.options))
            log.info("VitalDB %s: %s -> %s", split, describe(summary), stem.with_suffix(".npy"))
            if not summary["windows"]:
                raise BioexpError(f"no usable {split} windows from {self.root}: {describe(summary)}; "
                                  "check the tracks/channels (data.channels) and the quality gates (data.windows)")

    def _load(self, name: str) -> Windows | None:
        path = self.windows_dir() / name
        if not (path.is_file() or path.with_suffix(".npy").is_file()):
            return None
        windows = Windows.load(path)
        self._check_channels(windows, path)
        return windows

    def windows(self) -> dict[str, Windows]:
        """Train/val/test windows, built or rebuilt first when needed."""
        if self._windows is not None:
            return self._windows
        hp = self.hparams
        if self.root is not None:
            self.windows_dir()  # refuses before anything is synthesised
            self._ensure_cases()
            self._build_missing()
        where = self.windows_dir()
        train, val, test = (self._load(name) for name in self._files())
        if train is None:
            raise DataNotFoundError(f"{where / hp.train_file} not found; build it with `python -m bioexp.data.vitaldb "
                                    "build-windows ...` or set data.root to a folder of VitalDB cases")
        if self.root is None and train.case_ids is None:
            log.warning("%s records no case ids (the guide's data/labels layout): the patient split of these "
                        "files cannot be checked", where / hp.train_file)
        if val is None:
            if self.root is not None:
                raise BioexpError(f"no validation cases: {describe(train.summary)} in train and none in val; add "
                                  "cases or change data.split_fractions")
            train, val = held_out_by_case(train, hp.val_fraction, hp.seed, str(where / hp.train_file))
        if test is None:
            if not hp.test_on_val:
                absent = f"{where / hp.test_file} absent" + (" or no test cases" if self.root else "")
                raise DataNotFoundError(f"no test windows ({absent}); "
                                        "provide them, or test on the validation windows with data.test_on_val=true")
            log.warning("data.test_on_val=true: the test stage uses the validation windows")
            test = val
        out = {"train": train, "val": val, "test": test}
        self._check_disjoint(out)
        if hp.target:
            out = {k: v.subset(np.flatnonzero(np.isfinite(v.hr))) for k, v in out.items()}
            if min(len(v) for v in out.values()) == 0:
                raise BioexpError(f"data.target=hr but some split has no window with a heart-rate label (track "
                                  f"{HR_TRACK}); use cases that have it, or data.target=null for pretraining")
        if hp.max_train_windows and len(out["train"]) > hp.max_train_windows:
            rows = np.random.default_rng(hp.seed).choice(len(out["train"]), hp.max_train_windows, replace=False)
            out["train"] = out["train"].subset(np.sort(rows))
        self._windows = out
        return out

    def _check_disjoint(self, out: dict[str, Windows]) -> None:
        """No case in two splits (test may be val itself, by request)."""
        ids = {k: set(v.case_ids.tolist()) for k, v in out.items() if v.case_ids is not None}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            if a in ids and b in ids and out[a] is not out[b] and ids[a] & ids[b]:
                shared = sorted(ids[a] & ids[b])
                raise BioexpError(f"cases {shared[:3]}{' ...' if len(shared) > 3 else ''} have windows in both "
                                  f"{a} and {b} ({self.windows_dir()}): the split leaks; rebuild the windows from "
                                  "data.root")

    def _check_channels(self, windows: Windows, path: Path) -> None:
        want = list(self.hparams.channels)
        if windows.channels and windows.channels != want:
            raise BioexpError(f"{path} holds channels {windows.channels}, data.channels is {want}; "
                              "rebuild the windows or change data.channels")
        if windows.data.ndim != 3 or windows.data.shape[1:] != (len(want), self.length):
            raise BioexpError(f"{path}: data has shape {windows.data.shape}, expected [N, {len(want)}, {self.length}]")

    # -- loaders -----------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self.datasets = {k: WindowDataset(v) for k, v in self.windows().items()}


class WindowDataset:
    """``(x [C, L], hr)`` pairs read from the (memory-mapped) windows; accepts :class:`EpochSampler`'s
    ``(index, seed)``. Pickled for worker processes as the file name, not the data."""

    def __init__(self, windows: Windows) -> None:
        self.data, self.rows, self.hr = windows.data, windows.index(), windows.hr

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = item[0] if isinstance(item, tuple) else item
        return torch.from_numpy(np.array(self.data[self.rows[index]], np.float32)), torch.tensor(self.hr[index])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if isinstance(self.data, np.memmap) and self.data.filename:
            state["data"] = str(self.data.filename)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if isinstance(self.data, str):
            self.data = np.load(self.data, mmap_mode="r")


# -- command line --------------------------------------------------------------------------------
def _yaml(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    from omegaconf import OmegaConf

    if not Path(path).is_file():
        raise BioexpError(f"{path} not found")
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise BioexpError(f"--shard {text!r}: write it as i/n with 0 <= i < n (e.g. 0/4)")
    return i, n


def shard_cases(case_ids: Sequence[str], shard: tuple[int, int] | None) -> list[str]:
    """The ``i``-th of ``n`` contiguous case-id ranges (sorted ids), so ``n`` machines cover every case once."""
    ids = sorted(case_ids)
    return ids if shard is None else [str(c) for c in np.array_split(np.array(ids, dtype=object), shard[1])[shard[0]]]


def _cmd_prepare(args: argparse.Namespace) -> str:
    root = Path(args.cases_dir)
    index = build_index(root, Path(args.output) / "index.json", args.workers) if args.case_set == "bis" else None
    splits = prepare_splits(root, args.mode, args.case_set, args.seed, args.fractions, args.fasttrack_cases,
                            args.clinical_csv, index)
    path = write_splits(splits, Path(args.output))
    return f"wrote {path}: " + ", ".join(f"{s} {len(splits[s])} cases" for s in SPLITS)


def _build_args(args: argparse.Namespace) -> tuple[Path, list[str], dict[str, Any], dict[str, Any], Path]:
    splits = read_splits(Path(args.split_file))
    root = Path(args.cases_dir or splits["source"])
    specs, options = merge(CHANNELS, _yaml(args.channels_yaml)), merge(WINDOWS, _yaml(args.windows_yaml))
    return root, splits[args.split], specs, options, Path(args.outdir)


def _cmd_build(args: argparse.Namespace) -> str:
    root, cases, channel_specs, options, out = _build_args(args)
    check_channels(args.channels, channel_specs)
    shard = _shard(args.shard)
    mine = shard_cases(cases, shard)
    built = build_case_shards(root, mine, args.channels, channel_specs, options, out / "shards", args.workers)
    if shard is not None:
        return (f"built {built} of {len(mine)} cases of shard {shard[0]}/{shard[1]} into {out / 'shards'}; after all "
                "shards (copied into one shards/ folder): `python -m bioexp.data.vitaldb merge-windows` with the same "
                "arguments")
    return _cmd_merge(args)


def _cmd_merge(args: argparse.Namespace) -> str:
    root, cases, channel_specs, options, out = _build_args(args)
    stem = out / f"{args.split}_windows"
    length = round(options["seconds"] * options["fs"])
    summary = merge_shards(out / "shards", cases, args.channels, length, stem,
                           windows_fingerprint(root, cases, args.channels, channel_specs, options),
                           settings_fingerprint(args.channels, channel_specs, options))
    if not summary["windows"]:
        raise BioexpError(f"no usable windows: {describe(summary)}")
    return f"wrote {stem}.npy ({summary['windows']} x {len(args.channels)} x {length}): {describe(summary)}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bioexp.data.vitaldb",
                                     description="VitalDB case splits and 10 s biosignal windows.")
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare-splits", help="patient-level train/val/test case ids -> splits_<mode>.json")
    prep.add_argument("--cases-dir", required=True, help="folder of .vital files / WFDB records")
    prep.add_argument("--mode", choices=MODES, default="fasttrack", help="fasttrack: a small subset (default)")
    prep.add_argument("--case-set", choices=CASE_SETS, default="all", help="bis: cases with a BIS track")
    prep.add_argument("--output", default="data", help="folder for splits_<mode>.json (default data)")
    prep.add_argument("--clinical-csv", default=None, help=f"default: {CLINICAL} in the cases dir or one level up")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--fractions", type=float, nargs=3, default=(0.7, 0.15, 0.15), metavar=("TRAIN", "VAL", "TEST"))
    prep.add_argument("--fasttrack-cases", type=int, default=70, help="cases kept in fasttrack mode (default 70)")
    prep.add_argument("--workers", type=int, default=1, help="processes indexing the cases (case-set bis)")
    prep.set_defaults(handler=_cmd_prepare)
    for name, handler, text in (("build-windows", _cmd_build, "filtered, gated, z-scored windows -> "
                                 "<outdir>/<split>_windows.npy (+ .meta.npz), per-case shards in <outdir>/shards"),
                                ("merge-windows", _cmd_merge, "merge the per-case shards of a split (after --shard "
                                 "builds) -> <outdir>/<split>_windows.npy")):
        build = commands.add_parser(name, help=text)
        build.add_argument("--split-file", required=True)
        build.add_argument("--split", default="train", choices=SPLITS)
        build.add_argument("--outdir", required=True)
        build.add_argument("--cases-dir", default=None, help="default: the split file's source folder")
        build.add_argument("--channels", nargs="+", default=["PPG", "ECG"])
        build.add_argument("--channels-yaml", default=None, help="per-channel track names and filters (overrides)")
        build.add_argument("--windows-yaml", default=None, help="window length, rate and quality gates (overrides)")
        build.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
        if name == "build-windows":
            build.add_argument("--shard", default=None, help="i/n: build only the i-th of n case-id ranges "
                               "(one per machine), then merge-windows")
        build.set_defaults(handler=handler)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors are one line on stderr and exit code 1."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        print(args.handler(args))
    except BioexpError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
