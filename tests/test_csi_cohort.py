"""CSI-Predictor on real files: the chest radiographs of ``shared/data/cxr`` (decoded with lungs dark and
upright), DICOM transfer syntaxes clinical archives use, and the quirks of real cohort exports."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from bioexp.data.csi import CSIDataModule, decode_image, read_image, read_labels
from bioexp.data.synth.csi import ZONES
from bioexp.errors import BioexpError
from tests.conftest import shared_data

MONO2 = "siim_cr_chest_pa_mono2_jpeg.dcm"
TAG_MONO1 = "siim_cr_chest_pa_tag_mono1_pixels_unchanged.dcm"
NEMA_MONO1 = "nema_rg1_chest_cr_mono1_j2k.dcm"
NIH = "nih_cxr14_00000001_000.png"


def _box(img: np.ndarray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    n = img.shape[0]
    return float(img[int(rows[0] * n):int(rows[1] * n), int(cols[0] * n):int(cols[1] * n)].mean())


@pytest.fixture(scope="module")
def cxr() -> Path:
    return shared_data("cxr")


@pytest.fixture(scope="module")
def decoded(cxr: Path) -> dict[str, np.ndarray]:
    """The four real files as the loader caches them (min-max scaled, 128 px)."""
    return {name: decode_image(str(cxr), 128, name) for name in (MONO2, TAG_MONO1, NEMA_MONO1, NIH)}


@pytest.mark.parametrize("name", [MONO2, NEMA_MONO1, NIH])
def test_real_chest_radiographs_decode_with_lungs_dark_and_upright(decoded, name):
    img = decoded[name]
    right_lung, left_lung = _box(img, (0.3, 0.55), (0.2, 0.35)), _box(img, (0.3, 0.55), (0.65, 0.8))
    mediastinum, abdomen = _box(img, (0.3, 0.55), (0.45, 0.55)), _box(img, (0.85, 0.95), (0.2, 0.8))
    heart_side, other_side = _box(img, (0.55, 0.72), (0.55, 0.68)), _box(img, (0.55, 0.72), (0.32, 0.45))
    # air dark: both lung fields well below the mediastinum (bone, soft tissue)
    assert max(right_lung, left_lung) < mediastinum - 0.2, (right_lung, left_lung, mediastinum)
    # upright: the bright abdomen below the dark lungs; the heart shadow on image right (patient left)
    assert max(right_lung, left_lung) < abdomen - 0.25
    assert heart_side > other_side + 0.04


def test_monochrome1_tag_over_monochrome2_pixels_follows_the_tag(decoded):
    # The file's tag says MONOCHROME1 over unchanged MONOCHROME2 pixels: DICOM says invert, so it decodes
    # to the exact inverse of the MONOCHROME2 original (lungs bright: the inversion branch works).
    np.testing.assert_allclose(decoded[TAG_MONO1], 1 - decoded[MONO2], atol=1e-5)
    img = decoded[TAG_MONO1]
    assert _box(img, (0.3, 0.55), (0.2, 0.35)) > _box(img, (0.3, 0.55), (0.45, 0.55)) + 0.2


def test_real_monochrome1_jpeg2000_is_inverted_after_its_window(cxr):
    ds = pydicom.dcmread(cxr / NEMA_MONO1)
    raw = ds.pixel_array.astype(np.float64)
    centre, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert ds.PhotometricInterpretation == "MONOCHROME1" and ds.file_meta.TransferSyntaxUID.is_compressed
    img = read_image(cxr / NEMA_MONO1)
    # DICOM PS3.3 C.11.2.1.2 linear window on the stored values, then the MONOCHROME1 inversion
    y_max = 2 ** int(ds.BitsStored) - 1
    windowed = np.clip(((raw - (centre - 0.5)) / (width - 1) + 0.5) * y_max, 0, y_max)
    np.testing.assert_allclose(img, windowed.max() + windowed.min() - windowed, rtol=1e-5, atol=1e-2)
    assert np.corrcoef(img.ravel()[::97], raw.ravel()[::97])[0, 1] < -0.99  # bright stored = dark shown


def _dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 12,
           syntax=ExplicitVRLittleEndian, fragments: list[bytes] | None = None, **tags) -> Path:
    ds = pydicom.Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    for key, value in tags.items():
        setattr(ds, key, value)
    if fragments is None:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    else:
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def _encoded(syntax, pixels: np.ndarray, path: Path) -> Path:
    """A 12-bit MONOCHROME2 DICOM in ``syntax``. pydicom 3.0 encodes RLE and JPEG 2000 itself (the latter
    with pylibjpeg-openjpeg) but neither JPEG Lossless nor (without pyjpegls) JPEG-LS: those two codestreams
    come from imagecodecs (libjpeg-turbo 3's lossless mode, predictor 1 = process 14 SV1; CharLS)."""
    import imagecodecs

    if syntax == JPEGLosslessSV1:
        stream = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=12)
        assert b"\xff\xc3" in stream  # SOF3: lossless, Huffman (process 14)
        return _dicom(path, pixels, syntax=syntax, fragments=[stream])
    if syntax == JPEGLSLossless:
        return _dicom(path, pixels, syntax=syntax, fragments=[imagecodecs.jpegls_encode(pixels, level=0)])
    ds = pydicom.dcmread(_dicom(path, pixels))
    ds.compress(syntax)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("syntax", [JPEGLosslessSV1, JPEGLSLossless, RLELossless, JPEG2000Lossless],
                         ids=["jpeg-lossless-process14", "jpeg-ls", "rle", "jpeg2000"])
def test_compressed_dicom_transfer_syntaxes_decode_exactly(tmp_path, syntax):
    pixels = (np.random.default_rng(0).integers(0, 4096, (40, 48)) // 64 * 64).astype(np.uint16)
    path = _encoded(syntax, pixels, tmp_path / "x.dcm")
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_image(path), pixels)


def test_window_is_applied_before_the_monochrome1_inversion(tmp_path):
    ramp = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (4, 1))  # 0 .. 4080
    path = _dicom(tmp_path / "w.dcm", ramp, "MONOCHROME1", WindowCenter=1000, WindowWidth=1000)
    img = read_image(path)
    scaled = (img - img.min()) / (img.max() - img.min())
    at = {v: scaled[0, v // 16] for v in (0, 496, 1008, 1504, 4080)}
    # window [500, 1500] on the stored values → shown 0..1, then inverted: below it white, above it black
    assert at[0] == at[496] == 1.0 and at[1504] == at[4080] == 0.0
    assert at[1008] == pytest.approx(0.5, abs=0.01)


def test_nifti_of_shape_1_h_w_is_one_image(tmp_path):
    img = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    stored = np.ascontiguousarray(np.fliplr(img).T)  # the cohort converter's orientation
    nib.save(nib.Nifti1Image(stored[None], np.eye(4)), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(stored[..., None], np.eye(4)), tmp_path / "b.nii.gz")
    nib.save(nib.Nifti1Image(np.stack([stored, stored]), np.eye(4)), tmp_path / "c.nii.gz")
    np.testing.assert_allclose(read_image(tmp_path / "a.nii.gz"), img)
    np.testing.assert_allclose(read_image(tmp_path / "b.nii.gz"), img)
    with pytest.raises(ValueError, match="expected one 2-D image"):
        read_image(tmp_path / "c.nii.gz")


def write_png_cohort(root: Path, n: int = 30, patient_column: str | None = "AdmissionID", **columns) -> Path:
    """``n`` 16-px PNG images with integer-looking FileIDs and random scores (some blank or 4)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    scores = rng.integers(0, 4, (n, 6)).astype(object)
    scores[rng.random((n, 6)) < 0.1] = ""
    scores[rng.random((n, 6)) < 0.1] = 4
    table = pd.DataFrame(scores, columns=list(ZONES))
    table.insert(0, "FileID", [f"{10000 + i}.0" for i in range(n)])  # as a spreadsheet exports them
    if patient_column:
        table[patient_column] = [f"{i // 2}.0" for i in range(n)]  # two images per patient
    for name, values in columns.items():
        table[name] = values
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / "images" / f"{10000 + i}.png")
    table.to_csv(root / "labels.csv", sep=";", index=False)
    return root


def _module(root: Path, **kwargs) -> CSIDataModule:
    kwargs = {"image_size": 16, "num_workers": 0, "batch_size": 4, "cache_dir": str(root / "cache"), **kwargs}
    dm = CSIDataModule(str(root), **kwargs)
    dm.prepare_data()
    dm.setup()
    return dm


def test_spreadsheet_file_ids_and_explicit_ungradable_scores_are_kept(tmp_path, caplog):
    root = write_png_cohort(tmp_path / "c")
    text = (root / "labels.csv").read_text()
    assert "10000.0;" in text and ";4;" in text
    table, skipped = read_labels(root / "labels.csv")
    assert not skipped and len(table) == 30 and table["FileID"].iloc[0] == "10000"
    assert table["AdmissionID"].iloc[3] == "1"
    raw = pd.read_csv(root / "labels.csv", sep=";", dtype=str, keep_default_na=False)
    fours = raw[list(ZONES)].to_numpy() == "4"
    blanks = raw[list(ZONES)].to_numpy() == ""
    assert fours.any() and blanks.any()
    np.testing.assert_array_equal(table[list(ZONES)].to_numpy() == 4, fours | blanks)  # both are class 4
    with caplog.at_level(logging.WARNING):
        dm = _module(root)
    assert not dm.skipped and sum(len(ds) for ds in dm.datasets.values()) == 30
    assert "splitting per image" not in caplog.text
    patients = {name: set(dm.table()["AdmissionID"].iloc[np.isin(dm.table()["row"], ds.rows)])
                for name, ds in dm.datasets.items()}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["val"])


def test_patient_column_choice_and_per_image_split_only_when_asked(tmp_path, caplog):
    none = write_png_cohort(tmp_path / "none", patient_column=None)
    message = r"no patient column \(PatientID, AdmissionID, ExamCode\).*data.split_by=image"
    with pytest.raises(BioexpError, match=message):
        _module(none)
    with caplog.at_level(logging.WARNING):
        dm = _module(none, split_by="image")
    assert "splitting per image" in caplog.text and dm.patient_column(dm.table()) is None
    assert sum(len(ds) for ds in dm.datasets.values()) == 30
    dm = _module(write_png_cohort(tmp_path / "exam", patient_column="ExamCode"))
    assert dm.patient_column(dm.table()) == "ExamCode"
    with pytest.raises(BioexpError, match="data.patient_column='Subject' is not a column"):
        _module(write_png_cohort(tmp_path / "named"), patient_column="Subject")
    root = write_png_cohort(tmp_path / "both", Subject=[f"S{i // 3}" for i in range(30)])
    assert _module(root, patient_column="Subject").patient_column(_module(root).table()) == "Subject"


def test_split_depends_on_split_seed_not_seed(tmp_path):
    root = write_png_cohort(tmp_path / "c", n=40)

    def test_rows(**kwargs) -> list[int]:
        return sorted(_module(root, **kwargs).datasets["test"].rows.tolist())

    assert test_rows(seed=1) == test_rows(seed=2) == test_rows(seed=3, split_seed=0)
    assert test_rows(split_seed=0) != test_rows(split_seed=1)


def test_unreadable_images_are_logged_one_line_each_and_a_threshold_fails(tmp_path, caplog):
    root = write_png_cohort(tmp_path / "c", n=40)
    (root / "images" / "10001.png").write_bytes(b"not an image")
    (root / "images" / "10002.png").unlink()
    with caplog.at_level(logging.WARNING):
        dm = _module(root, max_unreadable=0.05)  # 2 of 40 = 5 %: allowed
    assert set(dm.skipped) == {"10001", "10002"}
    lines = [r.getMessage() for r in caplog.records if "skipping image" in r.getMessage()]
    assert len(lines) == 2 and any("10001" in x for x in lines) and any("no image" in x for x in lines)
    with pytest.raises(BioexpError, match=r"2 of 40 images .* missing or unreadable .*data.max_unreadable=0.02"):
        _module(root, max_unreadable=0.02)


def test_the_csv_csi_column_reaches_the_batches(tmp_path):
    values = [f"{v:.2f}" if i % 5 else "" for i, v in enumerate(np.linspace(0, 3, 30))]
    dm = _module(write_png_cohort(tmp_path / "c", csi=values))
    x, y, csi = next(iter(dm.val_dataloader()))
    table = dm.table().set_index("row")
    expected = table.loc[dm.datasets["val"].rows[:len(csi)], "csi"].to_numpy(np.float32)
    np.testing.assert_array_equal(csi.numpy(), expected)
    assert y.shape == (len(x), 6)
