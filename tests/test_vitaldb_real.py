"""VitalDB on real layouts: the multi-rate IntelliVue .vital, WFDB multi-segment records, read-only roots,
leak-proof splits, the cached case index, runs that must not break the next one, and AMP on a GPU only."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import wfdb
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from bioexp.data import vitaldb as v
from bioexp.data import vitaldb_io
from bioexp.data.synth.vitaldb import generate_vitaldb
from bioexp.errors import BioexpError
from bioexp.utils.resolvers import amp_if_gpu
from tests.conftest import compose_cfg, shared_data


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 synthetic cases of 1 min (read-only)."""
    return generate_vitaldb(tmp_path_factory.mktemp("vitaldb_real") / "cases", cases=6, seed=1, minutes=1.0)


def test_intellivue_multi_rate_file_gives_windows_each_channel_resampled_on_its_own():
    path = shared_data("vital", "intellivue_demo.vital")
    rec = v.read_case(path, ["PPG", "ECG", "ART"], v.CHANNELS)
    assert rec.rates == [125.0, 500.0, 125.0] and [len(x) for x in rec.signals] == [4660, 18640, 4660]
    rec = v.read_case(path, ["PPG", "ECG"], v.CHANNELS)  # the time axis spans the tracks read (ABP starts first)
    assert rec.rates == [125.0, 500.0] and rec.seconds == pytest.approx(36.5, abs=0.1)
    windows = v.build_windows(path.parent, ["intellivue_demo"], ["PPG", "ECG"])  # reads only: shared stays as is
    assert windows.data.shape == (3, 2, 1250) and windows.summary["rejected"] == {}
    # the ECG window is the 500 Hz track filtered at 500 Hz and resampled 4:1 (anti-aliased), then z-scored
    ecg = v.resample(v.bandpass(rec.signals[1], 500.0, v.CHANNELS["ECG"]["filter"]), 500.0, 125.0)[:1250]
    np.testing.assert_allclose(windows.data[0, 1], (ecg - ecg.mean()) / ecg.std(), atol=1e-4)
    assert np.nanmean(windows.hr) == pytest.approx(60, abs=25)  # Intellivue/HR as the monitor heart rate
    # the demo's arterial wave sits on its minimum/maximum in 3 % of samples: the clipping gate says so
    art = v.build_windows(path.parent, ["intellivue_demo"], ["PPG", "ECG", "ART"])
    assert len(art.data) == 0 and art.summary["rejected"] == {"clipping": 2, "nan": 1}


def _wfdb_multisegment(root: Path) -> dict[str, np.ndarray]:
    """Two multi-segment records as MIMIC stores them: ``fixed`` (two segments) and ``var`` (a layout
    segment, a 4 s gap ``~``, a segment that lacks the ECG)."""
    rng = np.random.default_rng(0)
    fs, t = 125, np.arange(30 * 125) / 125
    ecg = np.sin(2 * np.pi * 1.2 * t) ** 15 + 0.02 * rng.standard_normal(len(t))
    ppg = 40 + 10 * np.sin(2 * np.pi * 1.2 * t) + 0.1 * rng.standard_normal(len(t))
    both = np.stack([ecg, ppg], axis=1)
    cwd = Path.cwd()
    root.mkdir()
    try:
        import os

        os.chdir(root)
        kw = {"fs": fs, "units": ["mV", "NU"], "sig_name": ["II", "PLETH"], "fmt": ["16", "16"]}
        wfdb.wrsamp("fixed_1", p_signal=both[:2000], **kw)
        wfdb.wrsamp("fixed_2", p_signal=both[2000:], **kw)
        fixed = wfdb.MultiRecord(record_name="fixed", n_sig=2, fs=fs, sig_len=len(t), seg_name=["fixed_1", "fixed_2"],
                                 seg_len=[2000, len(t) - 2000])
        fixed.n_seg = 2
        fixed.wrheader()
        Path("var_layout.hea").write_text("var_layout 2 125 0\n~ 0 200/mV 16 0 0 0 0 II\n~ 0 100/NU 16 0 0 0 0 PLETH\n")
        wfdb.wrsamp("var_1", p_signal=both[:2000], **kw)
        wfdb.wrsamp("var_2", fs=fs, units=["NU"], sig_name=["PLETH"], fmt=["16"], p_signal=ppg[2500:, None])
        var = wfdb.MultiRecord(record_name="var", n_sig=2, fs=fs, sig_len=len(t),
                               seg_name=["var_layout", "var_1", "~", "var_2"], seg_len=[0, 2000, 500, len(t) - 2500])
        var.n_seg = 4
        var.wrheader()
    finally:
        os.chdir(cwd)
    return {"ecg": ecg, "ppg": ppg}


def test_wfdb_multisegment_records_are_one_case_each_with_gaps_as_nan(tmp_path):
    truth = _wfdb_multisegment(tmp_path / "mimic")
    assert list(v.case_files(tmp_path / "mimic")) == ["fixed", "var"]  # segment and layout headers are not cases
    fixed = v.read_case(tmp_path / "mimic" / "fixed.hea", ["ECG", "PPG"], v.CHANNELS)
    np.testing.assert_allclose(fixed.signals[1], truth["ppg"], atol=0.01)  # both segments, joined
    var = v.read_case(tmp_path / "mimic" / "var.hea", ["ECG", "PPG"], v.CHANNELS)
    assert np.isnan(var.signals[0][2000:]).all() and np.isfinite(var.signals[0][:2000]).all()  # no ECG after 16 s
    assert np.isnan(var.signals[1][2000:2500]).all() and np.isfinite(var.signals[1][2500:]).all()  # the gap
    windows = v.build_windows(tmp_path / "mimic", ["fixed", "var"], ["PPG", "ECG"])
    assert windows.summary["skipped"] == {} and windows.summary["rejected"] == {"nan": 2}  # var: 20-30 s lack ECG
    assert list(windows.case_ids) == ["fixed"] * 3 + ["var"]
    (tmp_path / "mimic" / "fixed_2.dat").unlink()
    broken = v.build_windows(tmp_path / "mimic", ["fixed"], ["PPG", "ECG"])
    assert "a file of the record is missing" in broken.summary["skipped"]["fixed"]


def test_read_only_root_puts_windows_in_the_user_cache(cases, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(v, "_writable", lambda path: not str(path).startswith(str(cases)))
    dm = v.VitalDBDataModule(str(cases), None, split_mode="full", workers=1)
    with caplog.at_level("INFO"):
        dm.prepare_data()
    assert dm.windows_dir().is_relative_to(tmp_path / "cache" / "bioexp" / "vitaldb")
    assert not (cases / ".bioexp_windows").exists()
    assert sum("is read-only" in r.getMessage() for r in caplog.records) == 1


def test_splits_cannot_leak_patients(cases, tmp_path, caplog):
    root = tmp_path / "site" / "cases"
    shutil.copytree(cases, root)
    (root / "clinical_data.csv").rename(root.parent / "clinical_data.csv")  # one level up is found
    clinical = pd.read_csv(root.parent / "clinical_data.csv")
    clinical.loc[:, "subjectid"] = [1, 1, 1, 2, 2, 3]  # three patients with several cases each
    clinical.to_csv(root.parent / "clinical_data.csv", index=False)
    subject = {f"{c:04d}": s for c, s in zip(clinical.caseid, clinical.subjectid, strict=True)}
    for seed in range(5):
        split = v.prepare_splits(root, "full", seed=seed)
        owners = [{subject[c] for c in split[s]} for s in v.SPLITS]
        assert all(owners) and not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    (root.parent / "clinical_data.csv").rename(tmp_path / "elsewhere.csv")
    with pytest.raises(BioexpError, match="split_mode=full needs clinical_data.csv"):
        v.prepare_splits(root, "full")
    assert v.prepare_splits(root, "full", seed=4, clinical_csv=tmp_path / "elsewhere.csv") == split
    with caplog.at_level("WARNING"):
        v.prepare_splits(root, "fasttrack")
    assert sum("each case counts as its own patient" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(BioexpError, match="data.clinical_csv=.* not found"):
        v.prepare_splits(root, "full", clinical_csv=tmp_path / "nope.csv")


def test_case_index_is_built_once_and_cached(cases, tmp_path, monkeypatch):
    calls = []
    real = vitaldb_io.case_info
    monkeypatch.setattr(vitaldb_io, "case_info", lambda path: calls.append(path.name) or real(path))
    first = v.build_index(cases, tmp_path / "index.json")
    assert len(calls) == 6 and first["0001"]["tracks"]["SNUADC/PLETH"] == 500.0
    assert first["0001"]["seconds"] == pytest.approx(60)
    assert v.build_index(cases, tmp_path / "index.json") == first and len(calls) == 6  # nothing re-read
    truth = pd.read_csv(cases / "ground_truth.csv")
    assert [first[f"{c:04d}"]["bis"] for c in truth.caseid] == truth.bis.tolist()


def _fingerprints(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_one_run_never_breaks_the_next(cases, tmp_path):
    """The issue's sequences: a run on the user's cases, then the plain synthetic default in the same folder;
    a run on the user's window files (and the synthetic default told to use them, which refuses)."""
    data_dir = tmp_path / "data"
    mine = tmp_path / "my_cases"
    shutil.copytree(cases, mine)
    common = [f"paths.data_dir={data_dir}", "data.synthesize.cases=8", "data.synthesize.minutes=0.5", "data.workers=1"]

    def prepare(overrides: list[str]) -> v.VitalDBDataModule:
        dm = instantiate(compose_cfg(["experiment=vitaldb_msm", *overrides], tmp_path / "out").data)
        dm.prepare_data()
        return dm

    first = prepare([*common, f"data.root={mine}"])
    assert first.windows_dir().parent == mine / ".bioexp_windows" and not data_dir.exists()
    plain = prepare(common)  # failed with FileExistsError before
    assert plain.windows_dir().parent == data_dir / "vitaldb-synth" / ".bioexp_windows"
    own = tmp_path / "own"
    _user_windows(own, mine)
    before = _fingerprints(own)
    with pytest.raises(BioexpError, match="data=vitaldb_synth would train on synthetic cases"):
        prepare([f"paths.data_dir={tmp_path / 'fresh'}", f"data.windows_dir={own}"])
    assert not (tmp_path / "fresh").exists() and _fingerprints(own) == before
    dm = instantiate(compose_cfg(["experiment=vitaldb_msm", "data=vitaldb", f"data.windows_dir={own}"],
                                 tmp_path / "out").data)
    dm.setup()
    assert len(dm.datasets["train"]) == len(np.load(own / "train_windows.npz")["data"])
    assert _fingerprints(own) == before
    assert prepare(common).windows_dir() == plain.windows_dir()  # and the plain run still works
    with pytest.raises(InstantiationException) as error:
        prepare(["data=vitaldb"])
    assert "data=vitaldb needs data.root" in str(error.value.__cause__)


def _user_windows(directory: Path, cases: Path) -> None:
    directory.mkdir(parents=True)
    for split, ids in (("train", ["0001", "0002", "0003"]), ("val", ["0004"]), ("test", ["0005"])):
        w = v.build_windows(cases, ids, ["PPG", "ECG"])
        np.savez(directory / f"{split}_windows.npz", data=w.data, case_ids=w.case_ids, hr=w.hr)


def test_amp_if_gpu(monkeypatch):
    import torch

    resolve = amp_if_gpu.__wrapped__
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("16-mixed", "auto") == "16-mixed" and resolve("bf16-mixed", "gpu") == "bf16-mixed"
    assert resolve("16-mixed", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve("16-mixed", "auto") == "32-true"
    cfg = compose_cfg(["experiment=vitaldb_msm", "trainer=cpu"], Path("/tmp/unused"))
    assert cfg.trainer.precision == "32-true"
    cfg = compose_cfg(["experiment=vitaldb_msm", "trainer.precision=32-true"], Path("/tmp/unused"))
    assert cfg.trainer.precision == "32-true"
