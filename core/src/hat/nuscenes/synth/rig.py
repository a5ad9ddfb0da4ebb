"""The synthetic car's sensor rig: where each camera and the lidar sit, where they look, when they fire.

One place for it because two consumers must agree on it exactly: the renderer projects
boxes through these cameras, and the table writer records the same intrinsics and
sensor-to-ego transforms as ``calibrated_sensor``, so that ``boxes_to_camera`` with the
recorded calibration lands on the drawing. Six level cameras at about 1.5 m looking front,
front-left/right (+-55 deg), back-left/right (+-110 deg) and back, with the real focal
lengths, scaled from 1600x900 to the chosen image width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hat.nuscenes.constants import LIDAR
from hat.nuscenes.geometry import transform_matrix, yaw_to_quaternion

#: Full-resolution image size of the real cameras; intrinsics below are for it.
FULL_WIDTH, FULL_HEIGHT = 1600, 900


@dataclass(frozen=True)
class CameraSpec:
    """One camera of the rig, as nuScenes' calibrated sensors place it (rounded)."""

    yaw_deg: float  # heading of the optical axis in the ego frame (0 = forward, + = left)
    translation: tuple[float, float, float]  # on the ego, metres (x forward, y left, z up)
    focal: float  # pixels at 1600x900
    principal: tuple[float, float]
    time_offset_us: int  # trigger time relative to the lidar key frame


#: The real rig's layout (rounded): positions and focal lengths of nuScenes' calibrated sensors.
RIG: dict[str, CameraSpec] = {
    "CAM_FRONT": CameraSpec(0.0, (1.70, 0.016, 1.51), 1266.4, (816.3, 491.5), 12_500),
    "CAM_FRONT_RIGHT": CameraSpec(-55.0, (1.55, -0.493, 1.50), 1260.8, (808.0, 495.3), 20_000),
    "CAM_FRONT_LEFT": CameraSpec(55.0, (1.52, 0.495, 1.51), 1272.6, (826.6, 479.8), 4_500),
    "CAM_BACK": CameraSpec(180.0, (0.028, 0.003, 1.58), 809.2, (829.2, 481.8), 37_500),
    "CAM_BACK_LEFT": CameraSpec(110.0, (1.04, 0.485, 1.59), 1256.7, (792.1, 492.8), 45_000),
    "CAM_BACK_RIGHT": CameraSpec(-110.0, (1.01, -0.481, 1.56), 1259.5, (807.3, 501.2), 29_500),
}
_LIDAR_TRANSLATION = (0.985, 0.0, 1.84)
_LIDAR_YAW = -math.pi / 2


def camera_intrinsic(channel: str, image_width: int) -> np.ndarray:
    """The synthetic rig's 3x3 intrinsic of ``channel`` at ``image_width`` (real focal lengths, scaled)."""
    spec = RIG[channel]
    scale = image_width / FULL_WIDTH
    return np.array(
        [
            [spec.focal * scale, 0.0, spec.principal[0] * scale],
            [0.0, spec.focal * scale, spec.principal[1] * scale],
            [0.0, 0.0, 1.0],
        ]
    )


def image_height(image_width: int) -> int:
    """The image height that keeps nuScenes' 16:9 at ``image_width``."""
    return round(image_width * FULL_HEIGHT / FULL_WIDTH)


def camera_sensor2ego(channel: str) -> np.ndarray:
    """The synthetic rig's 4x4 camera-to-ego transform: a level camera turned by its yaw."""
    spec = RIG[channel]
    yaw = math.radians(spec.yaw_deg)
    rz = np.array([[math.cos(yaw), -math.sin(yaw), 0.0], [math.sin(yaw), math.cos(yaw), 0.0], [0.0, 0.0, 1.0]])
    # camera x (right) -> ego -y, camera y (down) -> ego -z, camera z (forward) -> ego +x
    cam_to_ego = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    out = np.eye(4)
    out[:3, :3] = rz @ cam_to_ego
    out[:3, 3] = spec.translation
    return out


def lidar_sensor2ego() -> np.ndarray:
    """The 4x4 lidar-to-ego transform: on the roof, turned as the real car's LIDAR_TOP."""
    return transform_matrix(yaw_to_quaternion(_LIDAR_YAW), _LIDAR_TRANSLATION)


def time_offset_us(channel: str) -> int:
    """When ``channel`` fires, in microseconds after the lidar's key frame (the sample's timestamp)."""
    return 0 if channel == LIDAR else RIG[channel].time_offset_us
