"""Rigid 6-DOF poses as 4x4 transforms: ``(x, y, z, roll, pitch, yaw)`` in mm and degrees, ZYX Euler.

``R = Rz(yaw) @ Ry(pitch) @ Rx(roll)``. Probe actions compose as transforms, not as vectors: moving by
``a`` then by ``b`` (``b`` expressed in the frame reached after ``a``) is ``T(a) @ T(b)``. Pure torch,
batched over leading dimensions and differentiable; shared by the synthetic generator and the model.
"""

from __future__ import annotations

import torch


def euler_zyx_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` roll, pitch, yaw in degrees -> ``(..., 3, 3)`` rotation ``Rz(yaw) Ry(pitch) Rx(roll)``."""
    roll, pitch, yaw = torch.deg2rad(angles_deg).unbind(-1)
    cr, sr, cp, sp, cy, sy = roll.cos(), roll.sin(), pitch.cos(), pitch.sin(), yaw.cos(), yaw.sin()
    rows = [cy * cp, cy * sp * sr - sy * cr, cy * sp * cr + sy * sr,
            sy * cp, sy * sp * sr + cy * cr, sy * sp * cr - cy * sr,
            -sp, cp * sr, cp * cr]
    return torch.stack(rows, dim=-1).reshape(*angles_deg.shape[:-1], 3, 3)


def matrix_to_euler_zyx(rotation: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotation -> ``(..., 3)`` roll, pitch, yaw in degrees (pitch in [-90, 90])."""
    # The clamp keeps asin's gradient finite at gimbal lock (pitch = +-90 deg).
    pitch = torch.asin((-rotation[..., 2, 0]).clamp(-1 + 1e-7, 1 - 1e-7))
    roll = torch.atan2(rotation[..., 2, 1], rotation[..., 2, 2])
    yaw = torch.atan2(rotation[..., 1, 0], rotation[..., 0, 0])
    return torch.rad2deg(torch.stack([roll, pitch, yaw], dim=-1))


def pose_to_matrix(pose: torch.Tensor) -> torch.Tensor:
    """``(..., 6)`` pose -> ``(..., 4, 4)`` homogeneous transform."""
    matrix = torch.zeros(*pose.shape[:-1], 4, 4, dtype=pose.dtype, device=pose.device)
    matrix[..., :3, :3] = euler_zyx_to_matrix(pose[..., 3:])
    matrix[..., :3, 3] = pose[..., :3]
    matrix[..., 3, 3] = 1.0
    return matrix


def matrix_to_pose(matrix: torch.Tensor) -> torch.Tensor:
    """``(..., 4, 4)`` homogeneous transform -> ``(..., 6)`` pose."""
    return torch.cat([matrix[..., :3, 3], matrix_to_euler_zyx(matrix[..., :3, :3])], dim=-1)


def invert(matrix: torch.Tensor) -> torch.Tensor:
    """Inverse of a rigid transform (``R^T``, ``-R^T t``), exact and cheaper than a general inverse."""
    rotation_t = matrix[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(matrix)
    out[..., :3, :3] = rotation_t
    out[..., :3, 3] = -(rotation_t @ matrix[..., :3, 3:]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


def compose(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The 6-DOF action of ``first`` followed by ``second`` (given in the frame ``first`` reaches)."""
    return matrix_to_pose(pose_to_matrix(first) @ pose_to_matrix(second))


def relative(start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """The action that moves a probe at pose ``start`` to pose ``end`` (both in world coordinates)."""
    return matrix_to_pose(invert(pose_to_matrix(start)) @ pose_to_matrix(end))


def rotation_angle_deg(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Geodesic angle in degrees between the rotations of two ``(..., 6)`` poses."""
    r = euler_zyx_to_matrix(first[..., 3:]).transpose(-1, -2) @ euler_zyx_to_matrix(second[..., 3:])
    cos = ((r.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))
