"""Synthetic chest X-rays with a congestion score (CSI, 0-3) per lung zone, in the CSI-Predictor format.

Why: the CSI loader, the six-zone model and its clinical metrics must run end to end without the
(private) cohort. Each image is a frontal chest X-ray drawn from simple anatomy (thorax, two lung
fields cut into superior / middle / inferior zones, heart shadow, spine, ribs, noise) whose zones
look the way their scores say: 1 adds vascular redistribution (thick vessels from the hilum), 2 adds
interstitial lines (Kerley-B-like streaks and reticular texture), 3 adds alveolar opacity (patchy
haze). Some zones are ungradable (covered by a dense overlay, as by a device or out-of-field
collimation) and have a blank score. Images are float32 NIfTI ``.nii.gz`` stored as the cohort's
converter stores them (transposed and mirrored, which :func:`bioexp.data.csi.read_image` undoes);
labels are the ``;``-separated ``labels.csv`` with a ``PatientID`` column (some patients have two
images) and the image's CSI average (``csi``: mean of the gradable zones, 2 decimals). Patient-left is
image-right (radiological convention).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

ZONES = ("right_sup", "left_sup", "right_mid", "left_mid", "right_inf", "left_inf")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    coarse = rng.uniform(-1, 1, (size // scale + 2, size // scale + 2))
    idx = np.arange(size) / scale
    i0 = idx.astype(int)
    f = idx - i0
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _segment(yy: np.ndarray, xx: np.ndarray, p0: tuple[float, float], p1: tuple[float, float],
             width: float) -> np.ndarray:
    """A soft line from p0 to p1 (coordinates in [0, 1], (y, x)) of Gaussian profile ``width``."""
    d = np.subtract(p1, p0)
    t = np.clip(((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / (d @ d + 1e-12), 0, 1)
    dist2 = (yy - p0[0] - t * d[0]) ** 2 + (xx - p0[1] - t * d[1]) ** 2
    return np.exp(-0.5 * dist2 / width**2)


def render(scores: np.ndarray, ungradable: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One image ``[size, size]`` in [0, 1] (rows top to bottom, patient-right on the left).

    ``scores`` are the six zone scores (0-3, in :data:`ZONES` order), ``ungradable`` which zones
    are covered so that their score cannot be read.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03, 2)
    img = np.full((size, size), 0.05)
    body = ((yy - cy - 0.05) / 0.52) ** 2 + ((xx - cx) / 0.46) ** 2 < 1
    img[body] = 0.42
    img += 0.12 * np.exp(-0.5 * ((xx - cx) / 0.035) ** 2) * body  # spine / mediastinum
    lung_h, lung_w = 0.30 + rng.uniform(-0.02, 0.02), 0.15 + rng.uniform(-0.01, 0.01)
    top = cy - 0.27
    zone_masks, lungs = {}, np.zeros_like(img, dtype=bool)
    for side, sx in (("right", cx - 0.2), ("left", cx + 0.2)):  # patient right = image left
        lung = ((yy - top - lung_h) / lung_h) ** 2 + ((xx - sx) / lung_w) ** 2 < 1
        lung &= yy < top + 1.7 * lung_h  # flat-ish diaphragm
        lungs |= lung
        bottom = top + 1.7 * lung_h
        cuts = np.linspace(top, bottom, 4)
        for level, lo, hi in zip(("sup", "mid", "inf"), cuts[:-1], cuts[1:], strict=True):
            zone_masks[f"{side}_{level}"] = lung & (yy >= lo) & (yy < hi)
    img[lungs] = 0.14
    # ribs: curved bands across both lungs
    for k in range(9):
        y0 = top + 0.02 + k * 0.058
        band = np.exp(-0.5 * ((yy - y0 - 0.9 * (xx - cx) ** 2) / 0.008) ** 2)
        img += 0.06 * band * lungs
    heart = ((yy - cy - 0.14) / 0.15) ** 2 + ((xx - cx - 0.06) / 0.17) ** 2 < 1
    img[heart & body] = np.maximum(img[heart & body], 0.40)
    texture = _smooth_noise(rng, size, max(2, size // 64))
    for z, name in enumerate(ZONES):
        mask = zone_masks[name].astype(float)
        score = int(scores[z])
        effect = np.zeros_like(img)
        hilum = (cy - 0.02, cx - 0.07 if name.startswith("right") else cx + 0.07)
        ys, xs = np.nonzero(zone_masks[name])
        if score >= 1 and len(ys):  # vascular redistribution: thick vessels fanning out from the hilum
            for _ in range(3 + 2 * score):
                j = rng.integers(len(ys))
                effect += 0.10 * _segment(yy, xx, hilum, (ys[j] / size, xs[j] / size), 0.006)
        if score >= 2 and len(ys):  # interstitial lines + reticular texture
            for _ in range(6):
                j = rng.integers(len(ys))
                y0, x0 = ys[j] / size, xs[j] / size
                effect += 0.09 * _segment(yy, xx, (y0, x0 - 0.03), (y0, x0 + 0.03), 0.003)
            effect += 0.05 * np.abs(texture)
        if score >= 3:  # alveolar opacity: patchy haze filling the zone
            effect += 0.20 + 0.08 * _smooth_noise(rng, size, max(2, size // 16))
        img += mask * (effect + 0.03 * score)
        if ungradable[z]:
            img = np.where(zone_masks[name], 0.85 + 0.03 * rng.standard_normal(img.shape), img)
    img += 0.02 * rng.standard_normal(img.shape)  # quantum noise
    gain = rng.uniform(0.85, 1.15)
    return np.clip(img * gain, 0, 1)


def sample_scores(n: int, rng: np.random.Generator, ungradable_frac: float) -> tuple[np.ndarray, np.ndarray]:
    """Zone scores following a per-image congestion level (worse at the bases), and ungradable zones."""
    level = rng.uniform(-0.4, 3.2, n)
    gradient = np.array([-0.5, -0.5, 0.0, 0.0, 0.5, 0.5])
    scores = np.clip(np.rint(level[:, None] + gradient + rng.normal(0, 0.45, (n, 6))), 0, 3).astype(int)
    ungradable = rng.random((n, 6)) < ungradable_frac
    ungradable[ungradable.all(axis=1), 0] = False  # every image keeps at least one gradable zone
    return scores, ungradable


def to_nifti_array(img: np.ndarray) -> np.ndarray:
    """The cohort's on-disk orientation: the loader applies ``fliplr(transpose(data))``."""
    return np.ascontiguousarray(np.fliplr(img).T)


def generate_csi(out: str | Path, images: int = 600, seed: int = 0, size: int = 256,
                 ungradable_frac: float = 0.08, overwrite: bool = False) -> Path:
    """Write ``images`` NIfTI chest X-rays under ``out/images`` and ``out/labels.csv``; returns ``out``."""
    import nibabel as nib

    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    if images < 1 or size < 32:
        raise ValueError(f"need at least 1 image of at least 32 px, got {images} of {size} px")
    rng = np.random.default_rng(seed)
    scores, ungradable = sample_scores(images, rng, ungradable_frac)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    patient, rows = 0, []
    for i in range(images):
        if i == 0 or rng.random() > 0.25:  # a quarter of the images are a patient's second one
            patient += 1
        file_id = f"CXR{i:05d}"
        img = render(scores[i], ungradable[i], size, rng)
        # 1/1024 levels: keeps the noise's look and lets gzip compress
        data = np.round(to_nifti_array(img) * 1024) / 1024
        nib.save(nib.Nifti1Image(data.astype(np.float32), np.eye(4)), tmp / "images" / f"{file_id}.nii.gz")
        zone_scores = [None if ungradable[i, z] else int(scores[i, z]) for z in range(6)]
        graded = [v for v in zone_scores if v is not None]
        rows.append({"FileID": file_id, **dict(zip(ZONES, zone_scores, strict=True)), "PatientID": f"P{patient:05d}",
                     "csi": round(float(np.mean(graded)), 2)})  # the cohort's own CSI average per image
    table = pd.DataFrame(rows)
    table[list(ZONES)] = table[list(ZONES)].astype("Int64")
    table.to_csv(tmp / "labels.csv", sep=";", index=False)
    tmp.rename(out)
    return out
