"""Rotations and frames of nuScenes boxes: global <-> ego <-> camera, in float64 numpy.

nuScenes stores every box in the global frame (x east-ish, y north-ish, z up) as a
centre, a size ``(w, l, h)`` and a rotation quaternion ``(w, x, y, z)``; each sample_data
carries its sensor's pose on the ego vehicle (``sensor2ego``) and the ego's pose in the
world (``ego2global``), both as 4x4 matrices that map child-frame points into the parent.
A box's own frame has +x along its length (its heading), +y to its left, +z up.

A monocular detector works in the camera frame (x right, y down, z forward) and predicts
one angle, the yaw about the camera's +y axis. With ``d`` the box's +x axis expressed in
camera coordinates, ``yaw_cam = atan2(-d_z, d_x)``: the heading is
``(cos yaw, 0, -sin yaw)``, so yaw 0 points right, yaw -pi/2 points away from the camera
and yaw pi/2 towards it. Boxes are upright, so going back from the camera is exact for a
level camera; for a tilted one the heading is taken as the global-xy direction of the
camera-frame heading (the box stays upright: its global rotation is yaw-only).

These functions are pure (no devkit), so the packer, datasets, post-processing and the
synthetic generator all share one definition of every transform.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: Box-local corner signs in the devkit's order (``Box.corners``): the first four corners
#: face forward (+x), the last four backward; within each four: left-top, right-top,
#: right-bottom, left-bottom (left = +y, top = +z).
_CORNER_SIGNS = np.array(
    [
        [1, 1, 1],
        [1, -1, 1],
        [1, -1, -1],
        [1, 1, -1],
        [-1, 1, 1],
        [-1, -1, 1],
        [-1, -1, -1],
        [-1, 1, -1],
    ],
    dtype=np.float64,
)

#: Box-local axes -> "camera-aligned box at yaw 0": length (+x) along camera +x, up (+z)
#: along camera -y, so the box's left (+y) points along camera +z.
_BOX_TO_CAM0 = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def quaternion_to_matrix(q_wxyz: Any) -> np.ndarray:
    """Rotation matrix (3, 3) of a quaternion ``(w, x, y, z)`` (normalized first)."""
    w, x, y, z = np.asarray(q_wxyz, dtype=np.float64) / np.linalg.norm(q_wxyz)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(matrix: Any) -> np.ndarray:
    """Quaternion ``(w, x, y, z)`` of a rotation matrix, with ``w >= 0`` (one of the two signs).

    Shepperd's method: pivot on the largest of the four squared components, so the
    result is accurate for every rotation, including half turns.
    """
    m = np.asarray(matrix, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    candidates = (trace, m[0, 0], m[1, 1], m[2, 2])
    pivot = int(np.argmax(candidates))
    if pivot == 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif pivot == 1:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif pivot == 2:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def yaw_to_quaternion(yaw: float) -> np.ndarray:
    """Quaternion ``(w, x, y, z)`` of a rotation by ``yaw`` about +z."""
    return np.array([np.cos(yaw / 2.0), 0.0, 0.0, np.sin(yaw / 2.0)])


def quaternion_yaw(q_wxyz: Any) -> float:
    """Heading of the rotated +x axis in the xy plane (what the devkit's ``quaternion_yaw`` returns)."""
    heading = quaternion_to_matrix(q_wxyz)[:, 0]
    return float(np.arctan2(heading[1], heading[0]))


def transform_matrix(rotation_wxyz: Any, translation: Any) -> np.ndarray:
    """The 4x4 matrix mapping points of a child frame into its parent (rotate, then translate)."""
    out = np.eye(4)
    out[:3, :3] = quaternion_to_matrix(rotation_wxyz)
    out[:3, 3] = np.asarray(translation, dtype=np.float64)
    return out


def rigid_inverse(matrix: Any) -> np.ndarray:
    """Inverse of a 4x4 rotation + translation (exact and cheaper than a general inverse)."""
    m = np.asarray(matrix, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:3, :3].T + matrix[:3, 3]


def _yaw_rotation_cam(yaw: np.ndarray) -> np.ndarray:
    """(N, 3, 3): box-local axes -> camera axes for camera yaws (rotation about camera +y)."""
    c, s = np.cos(yaw), np.sin(yaw)
    zeros, ones = np.zeros_like(yaw), np.ones_like(yaw)
    ry = np.stack(
        [np.stack([c, zeros, s], -1), np.stack([zeros, ones, zeros], -1), np.stack([-s, zeros, c], -1)], axis=-2
    )
    return ry @ _BOX_TO_CAM0


def boxes_to_camera(boxes: Mapping[str, Any], ego2global: Any, sensor2ego: Any) -> dict[str, np.ndarray]:
    """Global boxes (a packed ``boxes`` map) in one camera's frame.

    Returns ``center`` (N, 3), ``size`` (N, 3) w, l, h (unchanged), ``yaw`` (N,) camera yaw
    (see the module docstring) and ``velocity`` (N, 3): the global ``(vx, vy, 0)``
    rotated into the camera (not translated; NaN stays NaN).
    """
    sensor2global = np.asarray(ego2global, dtype=np.float64) @ np.asarray(sensor2ego, dtype=np.float64)
    global2sensor = rigid_inverse(sensor2global)
    center = np.asarray(boxes["center"], dtype=np.float64).reshape(-1, 3)
    size = np.asarray(boxes["size"], dtype=np.float64).reshape(-1, 3)
    rotation = np.asarray(boxes["rotation"], dtype=np.float64).reshape(-1, 4)
    velocity = np.asarray(boxes["velocity"], dtype=np.float64).reshape(-1, 2)
    n = len(center)
    heading_global = np.array([quaternion_to_matrix(q)[:, 0] for q in rotation]).reshape(n, 3)
    heading_cam = heading_global @ global2sensor[:3, :3].T
    velocity3 = np.concatenate([velocity, np.zeros((n, 1))], axis=1)
    return {
        "center": _apply(global2sensor, center),
        "size": size.copy(),
        "yaw": np.arctan2(-heading_cam[:, 2], heading_cam[:, 0]),
        "velocity": velocity3 @ global2sensor[:3, :3].T,
    }


def boxes_from_camera(
    center: Any, size: Any, yaw: Any, velocity: Any, ego2global: Any, sensor2ego: Any
) -> dict[str, np.ndarray]:
    """Camera-frame boxes back in the global frame, as the devkit's results want them.

    ``velocity`` is (N, 2) ``(vx, vz)`` in the camera (a ground-plane motion has no
    camera-y part). Returns ``center`` (N, 3), ``size`` (N, 3), ``rotation`` (N, 4) wxyz
    (upright: yaw about global +z only) and ``velocity`` (N, 2) global ``(vx, vy)``.
    """
    sensor2global = np.asarray(ego2global, dtype=np.float64) @ np.asarray(sensor2ego, dtype=np.float64)
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    velocity = np.asarray(velocity, dtype=np.float64).reshape(-1, 2)
    n = len(center)
    heading_cam = np.stack([np.cos(yaw), np.zeros(n), -np.sin(yaw)], axis=1)
    heading_global = heading_cam @ sensor2global[:3, :3].T
    yaw_global = np.arctan2(heading_global[:, 1], heading_global[:, 0])
    velocity_cam = np.stack([velocity[:, 0], np.zeros(n), velocity[:, 1]], axis=1)
    velocity_global = velocity_cam @ sensor2global[:3, :3].T
    return {
        "center": _apply(sensor2global, center),
        "size": np.asarray(size, dtype=np.float64).reshape(-1, 3).copy(),
        "rotation": np.array([yaw_to_quaternion(y) for y in yaw_global]).reshape(n, 4),
        "velocity": velocity_global[:, :2],
    }


def project_points(points_cam: Any, intrinsic: Any) -> np.ndarray:
    """Pixel coordinates (N, 2) of camera-frame points (N, 3); points must have z > 0."""
    points = np.asarray(points_cam, dtype=np.float64).reshape(-1, 3)
    uvw = points @ np.asarray(intrinsic, dtype=np.float64).T
    return uvw[:, :2] / uvw[:, 2:3]


def box_corners(center: Any, size: Any, yaw_cam: Any) -> np.ndarray:
    """Camera-frame corners (N, 8, 3) of camera-frame boxes, in the devkit's corner order.

    Corners 0-3 are the front face (+x, the heading), 4-7 the back face; 0, 1, 4, 5 are on
    top (camera -y side).
    """
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    wlh = np.asarray(size, dtype=np.float64).reshape(-1, 3)
    half = wlh[:, [1, 0, 2]][:, None, :] / 2.0  # local x (length), y (width), z (height) extents
    local = _CORNER_SIGNS[None] * half  # (N, 8, 3)
    rot = _yaw_rotation_cam(np.asarray(yaw_cam, dtype=np.float64).reshape(-1))
    return local @ rot.transpose(0, 2, 1) + center[:, None, :]
