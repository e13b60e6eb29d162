"""Synthetic echocardiography probe-guidance data in Cardiac Dreamer's on-disk format.

Per patient: a 3-D echogenic heart (four chambers and the aortic root as ellipsoidal myocardial shells
around dark blood pools, placed front to back as in a real heart; a bright pericardium; tissue with a
fixed scatterer texture) with its own position, orientation and size; a target standard view (an
apical view through the chambers' long axes); and a random-walk probe trajectory around it. Each
frame is a 2-D slice of the volume in the probe's image plane (lateral x, depth z) inside a 70-degree
fan, with depth attenuation, fresh speckle and log compression. Transitions carry exact actions in one
of two label conventions:

- ``additive`` (default; how the public Cardiac-Dreamer data are labelled): 6-vector differences of the
  poses, ``at1 = pose_t1 - target``, ``action_change = pose_t2 - pose_t1``, ``at2 = pose_t2 - target``,
  so ``at2 == at1 + action_change`` (exactly what the real patient data_0513_01 satisfies);
- ``se3`` (the published model's composition): rigid relative transforms (ZYX Euler), the action to
  the target ``at1 = inv(T_t1) T_target``, ``action_change = inv(T_t1) T_t2``, so
  ``T(at1) == T(action_change) T(at2)``.

Rotations are written in degrees (default, as the public data) or radians (``angle_unit="rad"``).
Poses, rendering and labels use scipy's rotations, never :mod:`bioexp.se3`, so the data check the
model's composition code instead of sharing its assumptions. ``probe_poses.json`` keeps every frame's
world pose (degrees), the target pose and the convention as ground truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial.transform import Rotation

from bioexp.data.synth.staging import staged

COMPOSITIONS = ("additive", "se3")
ANGLE_UNITS = ("deg", "rad")

SPACING_MM = 1.5
EXTENT_MM = ((-75.0, 75.0), (-75.0, 75.0), (-20.0, 160.0))  # heart frame: z is depth from the apical window
DEPTH_MM = 150.0
HALF_ANGLE_DEG = 35.0
# name: (centre, semi-axes, wall thickness) in mm, heart frame (y: anterior +). As in a real heart the
# right ventricle lies anterior, the left atrium posterior and the aortic root anterior between the
# atria: tilting the probe forward or back shows different anatomy (a heart symmetric in y would make the
# sign of an elevation or tilt error invisible in the image).
CHAMBERS = {
    "LV": ((12.0, -3.0, 62.0), (17.0, 17.0, 38.0), 9.0),
    "RV": ((-16.0, 7.0, 66.0), (13.0, 13.0, 32.0), 4.0),
    "LA": ((12.0, -9.0, 118.0), (15.0, 13.0, 16.0), 3.0),
    "RA": ((-17.0, 2.0, 118.0), (14.0, 13.0, 16.0), 3.0),
    "AO": ((-1.0, 15.0, 102.0), (8.0, 8.0, 16.0), 2.5),
}
PERICARDIUM = ((-2.0, 0.0, 85.0), (44.0, 32.0, 72.0), 3.0)
STEP_STD = np.array([2.5, 2.5, 2.0, 3.0, 3.0, 3.0])  # random-walk step per frame: mm, mm, mm, deg, deg, deg
START_STD = np.array([10.0, 10.0, 6.0, 10.0, 10.0, 10.0])


def pose_matrix(pose: np.ndarray) -> np.ndarray:
    """``(..., 6)`` pose (mm, degrees) -> ``(..., 4, 4)`` transform, ``R = Rz(yaw) Ry(pitch) Rx(roll)``."""
    pose = np.asarray(pose, dtype=np.float64)
    flat = pose.reshape(-1, 6)
    matrix = np.zeros((len(flat), 4, 4))
    matrix[:, :3, :3] = Rotation.from_euler("ZYX", flat[:, [5, 4, 3]], degrees=True).as_matrix()  # intrinsic
    matrix[:, :3, 3] = flat[:, :3]
    matrix[:, 3, 3] = 1.0
    return matrix.reshape(*pose.shape[:-1], 4, 4)


def matrix_pose(matrix: np.ndarray) -> np.ndarray:
    """``(..., 4, 4)`` transform -> ``(..., 6)`` pose (mm, degrees)."""
    flat = matrix.reshape(-1, 4, 4)
    yaw_pitch_roll = Rotation.from_matrix(flat[:, :3, :3]).as_euler("ZYX", degrees=True)
    return np.concatenate([flat[:, :3, 3], yaw_pitch_roll[:, ::-1]], axis=1).reshape(*matrix.shape[:-2], 6)


def relative_actions(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """The rigid action from world pose ``start`` to world pose ``end`` (``(..., 6)``), in ``start``'s frame."""
    return matrix_pose(np.linalg.inv(pose_matrix(start)) @ pose_matrix(end))


def labels(poses: np.ndarray, target: np.ndarray, composition: str) -> tuple[np.ndarray, np.ndarray]:
    """``(to_target, changes)``: each frame's ``at`` label and each move's, under ``composition``."""
    if composition == "additive":
        return poses - target, np.diff(poses, axis=0)
    return relative_actions(poses, np.broadcast_to(target, poses.shape)), relative_actions(poses[:-1], poses[1:])


def _shell(points: np.ndarray, centre: tuple, axes: tuple, thickness: float) -> tuple[np.ndarray, np.ndarray]:
    """Masks (inside, wall) of an ellipsoid whose wall is ``thickness`` mm thick outside its surface."""
    radius = np.sqrt((((points - np.asarray(centre)) / np.asarray(axes)) ** 2).sum(-1))
    inside = radius < 1.0
    return inside, ~inside & (radius < 1.0 + thickness / float(np.mean(axes)))


def heart_volume(rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """Echogenicity on the heart-frame grid (``EXTENT_MM`` at ``SPACING_MM``), float32 in about [0, 1]."""
    axes = [np.arange(lo, hi + SPACING_MM / 2, SPACING_MM) for lo, hi in EXTENT_MM]
    points = (np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1) / scale).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.standard_normal(points.shape[:3], dtype=np.float32), 1.0)
    texture = np.exp(0.8 * texture / texture.std())
    volume = 0.15 * texture
    peri_inside, peri_wall = _shell(points, *PERICARDIUM)
    volume[peri_inside] = 0.35 * texture[peri_inside]
    volume[peri_wall] = 1.0
    blood = np.zeros(volume.shape, dtype=bool)
    for centre, semi_axes, thickness in CHAMBERS.values():
        inside, wall = _shell(points, centre, semi_axes, thickness)
        volume[wall] = 0.75 * texture[wall]
        blood |= inside
    volume[blood] = 0.01 * texture[blood]  # walls first, then pools: septa stay where two walls meet
    return volume.astype(np.float32)


def render(volume: np.ndarray, heart_pose: np.ndarray, probe_pose: np.ndarray, size: int,
           rng: np.random.Generator) -> np.ndarray:
    """The ``size`` x ``size`` uint8 B-mode image seen by a probe at ``probe_pose`` (world frame)."""
    depth = np.linspace(0.0, DEPTH_MM, size)
    half_width = DEPTH_MM * np.sin(np.deg2rad(HALF_ANGLE_DEG))
    lateral = np.linspace(-half_width, half_width, size)
    zz, xx = np.meshgrid(depth, lateral, indexing="ij")
    plane = np.stack([xx, np.zeros_like(xx), zz, np.ones_like(xx)], axis=-1).reshape(-1, 4)
    to_heart = np.linalg.inv(pose_matrix(heart_pose)) @ pose_matrix(probe_pose)
    points = (plane @ to_heart.T)[:, :3]
    index = (points - np.array([lo for lo, _ in EXTENT_MM])) / SPACING_MM
    echo = ndimage.map_coordinates(volume, index.T, order=1, cval=0.0).reshape(size, size)
    radius, angle = np.hypot(xx, zz), np.degrees(np.arctan2(xx, zz))
    fan = (np.abs(angle) <= HALF_ANGLE_DEG) & (radius >= 4.0) & (radius <= DEPTH_MM)
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (size, size)), 0.6)
    intensity = echo * np.exp(-0.006 * radius) * speckle * fan
    image = np.log1p(30.0 * intensity) / np.log1p(30.0)
    return (np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _trajectory(rng: np.random.Generator, target: np.ndarray, frames: int) -> np.ndarray:
    """Probe poses wandering around the target view (mean-reverting, so they stay near the heart)."""
    poses = [target + rng.normal(0.0, START_STD)]
    for _ in range(frames - 1):
        step = -0.08 * (poses[-1] - target) + rng.normal(0.0, STEP_STD)
        poses.append(poses[-1] + step)
    return np.stack(poses)


def _patient(folder: Path, rng: np.random.Generator, transitions: int, size: int, composition: str,
             angle_unit: str) -> None:
    heart_pose = np.concatenate([rng.normal(0.0, 8.0, 3), rng.normal(0.0, 8.0, 3)])
    volume = heart_volume(rng, scale=float(rng.uniform(0.9, 1.1)))
    target = heart_pose.copy()  # the apical view: the probe at the heart frame's origin, looking down its z
    poses = _trajectory(rng, target, transitions + 1)
    (folder / "frames").mkdir(parents=True)
    names = []
    for i, pose in enumerate(poses):
        names.append(f"frames/frame_{i:04d}.png")
        Image.fromarray(render(volume, heart_pose, pose, size, rng)).save(folder / names[-1])
    to_target, changes = labels(poses, target, composition)
    scale = np.array([1, 1, 1] + [np.pi / 180 if angle_unit == "rad" else 1.0] * 3)
    rows = [{"ft1_image_path": names[i], "ft2_image_path": names[i + 1], "ft1_frame_id": i, "ft2_frame_id": i + 1,
             "at1_6dof": _round(to_target[i] * scale), "action_change_6dof": _round(changes[i] * scale),
             "at2_6dof": _round(to_target[i + 1] * scale)} for i in range(transitions)]
    (folder / "transitions_dataset.json").write_text(json.dumps(rows, indent=1))
    truth = {"target_pose": _round(target), "frame_poses": [_round(p) for p in poses],
             "heart_pose": _round(heart_pose), "composition": composition, "angle_unit": angle_unit,
             "convention": "poses: x,y,z mm; roll,pitch,yaw deg; R = Rz(yaw) Ry(pitch) Rx(roll)"}
    (folder / "probe_poses.json").write_text(json.dumps(truth, indent=1))


def _round(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def generate_cardiac_us(out: str | Path, patients: int = 8, transitions: int = 80, size: int = 224, seed: int = 0,
                        overwrite: bool = False, composition: str = "additive", angle_unit: str = "deg") -> Path:
    """Write ``patients`` folders (``data_patient_01`` ...) of about ``transitions`` transitions each.

    ``composition`` and ``angle_unit`` choose the label convention (see the module docstring); the
    frames are the same under every convention.

    Patients get between 0.6x and 1.4x ``transitions`` (uneven, as real acquisitions are). Built in a
    hidden sibling directory and moved into place, so an interrupted run leaves nothing at ``out``.
    """
    out = Path(out)
    if patients < 1 or transitions < 1 or size < 16:
        raise ValueError(f"need patients >= 1, transitions >= 1, size >= 16; got {patients}, {transitions}, {size}")
    if composition not in COMPOSITIONS or angle_unit not in ANGLE_UNITS:
        raise ValueError(f"composition must be one of {COMPOSITIONS} and angle_unit one of {ANGLE_UNITS}, "
                         f"got {composition!r}, {angle_unit!r}")
    with staged(out, overwrite) as staging:
        for p in range(patients):
            rng = np.random.default_rng([seed, p])
            count = max(1, round(transitions * rng.uniform(0.6, 1.4)))
            _patient(staging / f"data_patient_{p + 1:02d}", rng, count, size, composition, angle_unit)
    return out
