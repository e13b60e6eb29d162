"""Cardiac Dreamer on the real patient of the published repository (../shared/data/cardiac-dreamer) and the
readiness parts: label convention and rotation unit checks, missing frames, split seed, pretrained
backbones, the uint8 frame cache and full-precision guidance metrics."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bioexp import se3
from bioexp.data.cardiac_us import CardiacUSDataModule, TransitionDataset, load_image, read_patient
from bioexp.data.check import run_checks
from bioexp.errors import BioexpError
from bioexp.nets.dreamer import ImageBackbone, imagenet_cache_path
from bioexp.tasks.dreamer import guidance_errors
from bioexp.train import train
from tests.conftest import compose_cfg, run_cli, shared_data

REAL = "data_0513_01"
TINY = ["data.image_size=32", "data.num_workers=0", "data.batch_size=16", "model.net.d_model=32",
        "model.net.num_heads=2", "model.net.num_layers=1", "model.net.dim_feedforward=64", "model.net.arch=resnet18",
        "model.net.pretrained=null", "trainer=cpu", "debug=limit", "callbacks.rich_progress_bar=null",
        "print_config=false"]


def _copies(root: Path, json_rows: list | None = None, count: int = 3) -> Path:
    """The real patient ``count`` times (``p1``...): frame folders linked, the JSON copied or replaced."""
    source = shared_data("cardiac-dreamer", REAL)
    for name in (f"p{i + 1}" for i in range(count)):
        folder = root / name
        folder.mkdir(parents=True)
        for frames in ("ft1", "ft2"):
            (folder / frames).symlink_to(source / frames)
        text = json.dumps(json_rows) if json_rows is not None else (source / "transitions_dataset.json").read_text()
        (folder / "transitions_dataset.json").write_text(text)
    return root


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three "patients" (enough for a split): for training."""
    return _copies(tmp_path_factory.mktemp("real") / "processed")


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real patient once: for the checks (each reads every frame) and the cache."""
    return _copies(tmp_path_factory.mktemp("one") / "processed", count=1)


def _checks(root: Path, *overrides: str) -> list[tuple[bool, str]]:
    return run_checks(["experiment=cardiac_dreamer", "data=cardiac_us", f"data.root={root}", *overrides])


def _convention_lines(results: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    return [(ok, m) for ok, m in results if "labels vs se3" in m or "rotations up to" in m]


def test_real_labels_are_additive_in_degrees_and_the_check_says_so(one):
    """at2 == at1 + move exactly in the real patient; the se3 composition leaves about a millimetre."""
    patient = read_patient(one / "p1")
    assert len(patient) == 580
    np.testing.assert_allclose(patient.at2, patient.at1 + patient.change, atol=1e-4)
    results = _convention_lines(_checks(one))  # the experiment's default: additive, degrees
    assert len(results) == 2 and all(ok for ok, _ in results), results
    gap = [m for _, m in results if "labels vs se3" in m][0]
    se3_mm = float(gap.split("se3 ")[2].split(" mm")[0])
    assert 1.0 < se3_mm < 1.5 and "additive holds; model.composition=additive matches" in gap
    wrong = _convention_lines(_checks(one, "model.composition=se3"))
    failed = [m for ok, m in wrong if not ok]
    assert len(failed) == 1 and "set model.composition=additive" in failed[0]
    wrong_unit = [m for ok, m in _convention_lines(_checks(one, "data.angle_unit=rad")) if not ok]
    assert len(wrong_unit) == 1 and "set data.angle_unit=deg" in wrong_unit[0]


def test_check_reads_radians_and_se3_labels_and_fails_inconsistent_ones(tmp_path):
    """The real patient (its first 100 transitions) relabelled: in radians; as se3 transforms of the same
    moves; with a corrupted at2."""
    source = json.loads((shared_data("cardiac-dreamer", REAL) / "transitions_dataset.json").read_text())[:100]
    rad = [{**r, **{k: r[k][:3] + [math.radians(v) for v in r[k][3:]]
                    for k in ("at1_6dof", "action_change_6dof", "at2_6dof")}} for r in source]
    root = _copies(tmp_path / "rad", rad, count=1)
    assert all(ok for ok, _ in _convention_lines(_checks(root, "data.angle_unit=rad")))
    failed = [m for ok, m in _convention_lines(_checks(root)) if not ok]
    assert len(failed) == 1 and "set data.angle_unit=rad" in failed[0]
    # se3 labels: at2 = the move's inverse composed with at1 (so T(at1) = T(move) T(at2) holds)
    at1, move = (torch.tensor([r[k] for r in source], dtype=torch.float64) for k in ("at1_6dof", "action_change_6dof"))
    at2 = se3.relative(move, at1)
    rigid = [{**r, "at2_6dof": a.tolist()} for r, a in zip(source, at2, strict=True)]
    root = _copies(tmp_path / "se3", rigid, count=1)
    assert all(ok for ok, _ in _convention_lines(_checks(root, "model.composition=se3")))
    failed = [m for ok, m in _convention_lines(_checks(root)) if not ok]
    assert len(failed) == 1 and "set model.composition=se3" in failed[0]
    noisy = [{**r, "at2_6dof": [v + 0.5 for v in r["at2_6dof"]]} for r in source]
    failed = [m for ok, m in _convention_lines(_checks(_copies(tmp_path / "bad", noisy, count=1))) if not ok]
    assert len(failed) == 1 and "neither holds" in failed[0]


def test_check_cli_exits_1_on_a_composition_mismatch(one, tmp_path):
    done = run_cli(["experiment=cardiac_dreamer", "data=cardiac_us", f"data.root={one}", "model.composition=se3"],
                   tmp_path, module="bioexp.data.check")
    assert done.returncode == 1 and "[FAIL] p1: labels vs se3" in done.stdout and "Traceback" not in done.stderr


def test_frames_decode_once_into_a_uint8_memmap(one, tmp_path):
    dm = CardiacUSDataModule(str(one), image_size=32, num_workers=0, cache_dir=str(tmp_path / "cache"))
    cache = dm.frame_cache()
    assert dm.frame_cache() is cache and cache.path.parent == tmp_path / "cache"
    frames = cache.open()
    assert frames.dtype == np.uint8 and frames.shape == (1160, 32, 32) and cache.valid.all()
    item = TransitionDataset(cache.path, [dm.patients["p1"]], dm.frame_rows)[5]
    patient = dm.patients[item["patient"]]
    expected = load_image(patient.image_t1[5], 32).astype(np.float32) / 255
    np.testing.assert_array_equal(item["image_t1"][0].numpy(), expected)
    torch.testing.assert_close(item["at1"], torch.from_numpy(patient.at1[5]))


def test_missing_frames_are_skipped_when_loading_and_too_many_fail_before_training(cohort_copy, tmp_path):
    root, broken = cohort_copy
    dm = CardiacUSDataModule(str(root), image_size=32, num_workers=0, max_missing_frac=0.2)
    dm.prepare_data()
    total = sum(len(read_patient(p)) for p in root.iterdir() if not p.name.startswith("."))
    assert sum(len(p) for p in dm.patients.values()) == total - 4  # 2 frames, each in 2 transitions
    assert len(dm.skipped) == 2 and all(str(b) in dm.skipped for b in broken)
    with pytest.raises(BioexpError, match=r"4 of \d+ transitions .* more than data.max_missing_frac=0.01"):
        CardiacUSDataModule(str(root), image_size=32, max_missing_frac=0.01).prepare_data()
    done = run_cli(["experiment=cardiac_dreamer", f"data.root={root}", "data.synthesize=null", *TINY,
                    "data.max_missing_frac=0.01"], tmp_path)
    assert done.returncode == 1 and "data.max_missing_frac=0.01" in done.stderr
    assert "Traceback" not in done.stderr and "Epoch" not in done.stderr + done.stdout


@pytest.fixture
def cohort_copy(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A small synthetic cohort with one frame deleted and one overwritten with garbage."""
    from bioexp.data.synth.cardiac_us import generate_cardiac_us

    root = generate_cardiac_us(tmp_path / "broken", patients=4, transitions=12, size=32, seed=2)
    missing, garbage = root / "data_patient_02" / "frames" / "frame_0003.png", root / "data_patient_04" / "frames"
    garbage = garbage / "frame_0005.png"
    missing.unlink()
    garbage.write_bytes(b"not a png")
    return root, [missing, garbage]


def test_split_seed_alone_chooses_the_test_patients(tmp_path):
    names = [f"p{i:02d}" for i in range(10)]
    rows = [{"ft1_image_path": "a.png", "ft2_image_path": "b.png", "at1_6dof": [0.0] * 6,
             "action_change_6dof": [0.0] * 6, "at2_6dof": [0.0] * 6}]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "transitions_dataset.json").write_text(json.dumps(rows * (3 + len(name) % 3)))

    def split(**kwargs) -> dict:
        dm = CardiacUSDataModule(str(tmp_path), **kwargs)
        return dm.split_of({n: len(p) for n, p in dm.labelled.items()})

    assert split(seed=1) == split(seed=2) == split(seed=3, split_seed=0)
    assert split(split_seed=1)["test"] != split(split_seed=0)["test"]


@pytest.mark.parametrize("where", ["path", "torch_cache"])
def test_pretrained_backbone_loads_local_weights_and_never_downloads(tmp_path, monkeypatch, caplog, where):
    torch.manual_seed(7)
    reference = torchvision.models.resnet18(weights=None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if where == "path":
        path, pretrained = tmp_path / "resnet18.pth", str(tmp_path / "resnet18.pth")
    else:
        path, pretrained = imagenet_cache_path("resnet18"), "imagenet"
        assert path == tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    backbone = ImageBackbone("resnet18", pretrained)
    body = dict(backbone.body.named_parameters())
    torch.testing.assert_close(body["4.0.conv1.weight"], reference.layer1[0].conv1.weight, rtol=0, atol=0)
    torch.testing.assert_close(body["7.1.bn2.weight"], reference.layer4[1].bn2.weight, rtol=0, atol=0)
    torch.testing.assert_close(body["0.weight"], reference.conv1.weight.mean(dim=1, keepdim=True), rtol=0, atol=0)
    path.unlink()  # no weights: one warning, from scratch, and no download attempt
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda *a, **k: pytest.fail("downloaded"))
    caplog.clear()
    ImageBackbone("resnet18", "imagenet")
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "FROM SCRATCH" in warnings[0].getMessage()


def test_guidance_metrics_are_full_precision_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    target = torch.cat([torch.randn(64, 3, generator=g) * 20, torch.randn(64, 3, generator=g) * 30], dim=1)
    predicted = target + torch.cat([torch.randn(64, 3, generator=g), torch.randn(64, 3, generator=g) * 2], dim=1)
    exact = guidance_errors(predicted.double(), target.double())
    assert 2.0 < float(exact["guidance_rot_deg"]) < 5.0  # rotations of about 3 degrees
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = guidance_errors(predicted, target)
        # what the metric was before: the same formula left to autocast
        r = se3.euler_zyx_to_matrix(predicted[:, 3:]).transpose(-1, -2) @ se3.euler_zyx_to_matrix(target[:, 3:])
    assert abs(float(mixed["guidance_rot_deg"]) - float(exact["guidance_rot_deg"])) < 0.01
    assert abs(float(mixed["guidance_trans_mm"]) - float(exact["guidance_trans_mm"])) < 1e-3
    assert r.dtype == torch.bfloat16  # autocast does reach these products when not switched off


@pytest.mark.slow
@pytest.mark.parametrize("composition", ["additive", "se3"])
def test_real_patient_trains_end_to_end_with_either_composition(real, tmp_path, composition):
    out = tmp_path / composition
    summary, value = train(compose_cfg(["experiment=cardiac_dreamer", "data=cardiac_us", f"data.root={real}",
                                        f"model.composition={composition}", *TINY, "trainer.max_epochs=1",
                                        "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
                                        "trainer.limit_test_batches=2", f"data.cache_dir={tmp_path / 'cache'}"],
                                       out))
    metrics = summary["metrics"]
    assert math.isfinite(value) and math.isfinite(metrics["test/guidance_rot_deg"])
    assert 0 < metrics["test/mae_x_mm"] < 50 and metrics["test/baseline_mae_roll_deg"] > 0
    stats = json.loads((out / "dataset_stats.json").read_text())
    assert sum(stats["samples"].values()) == 3 * 580 and not stats["skipped_frames"]
    assert json.loads((out / "experiment_config.json").read_text())["model"]["composition"] == composition
    shutil.rmtree(tmp_path / "cache")
