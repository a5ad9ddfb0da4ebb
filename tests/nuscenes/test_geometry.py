"""Frames and rotations: round trips, the camera yaw convention, and agreement with the devkit and the drawings."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from hat.data.pack import PackReader
from hat.nuscenes.constants import CAMERAS
from hat.nuscenes.geometry import (
    box_corners,
    boxes_from_camera,
    boxes_to_camera,
    matrix_to_quaternion,
    project_points,
    quaternion_to_matrix,
    quaternion_yaw,
    transform_matrix,
    yaw_to_quaternion,
)
from hat.nuscenes.synth import background_image, camera_intrinsic, camera_sensor2ego

pytestmark = pytest.mark.needs_nuscenes


def random_quaternions(rng: np.random.Generator, n: int) -> np.ndarray:
    q = rng.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_quaternion_matrix_round_trip_and_devkit_agreement() -> None:
    from pyquaternion import Quaternion

    rng = np.random.default_rng(0)
    quats = random_quaternions(rng, 300)
    quats[:4] = [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]  # half turns and identity
    for q in quats:
        matrix = quaternion_to_matrix(q)
        np.testing.assert_allclose(matrix, Quaternion(q).rotation_matrix, atol=1e-12)
        back = matrix_to_quaternion(matrix)
        assert back[0] >= 0 and (np.allclose(back, q, atol=1e-12) or np.allclose(back, -q, atol=1e-12))
    for yaw in np.linspace(-math.pi + 1e-6, math.pi - 1e-6, 37):
        q = yaw_to_quaternion(yaw)
        assert quaternion_yaw(q) == pytest.approx(yaw, abs=1e-12)
        assert quaternion_yaw(q) == pytest.approx(Quaternion(q).yaw_pitch_roll[0], abs=1e-12)
    t = transform_matrix(quats[10], [1.0, -2.0, 3.0])
    point = np.array([0.5, 0.25, -4.0])
    np.testing.assert_allclose(t[:3, :3] @ point + [1.0, -2.0, 3.0], (t @ np.append(point, 1.0))[:3])


def test_camera_yaw_convention() -> None:
    """Yaw 0: heading along camera +x (right); yaw -pi/2: heading away from the camera (+z)."""
    sensor2ego = camera_sensor2ego("CAM_FRONT")  # looks along ego +x
    ego2global = np.eye(4)
    boxes = {
        "center": [[10.0, 0.0, 1.0], [10.0, 0.0, 1.0]],
        "size": [[2.0, 4.0, 1.5]] * 2,
        "rotation": [yaw_to_quaternion(-math.pi / 2), yaw_to_quaternion(0.0)],  # heading ego -y (right); ego +x
        "velocity": [[0.0, -3.0], [5.0, 0.0]],
    }
    cam = boxes_to_camera(boxes, ego2global, sensor2ego)
    np.testing.assert_allclose(cam["yaw"], [0.0, -math.pi / 2], atol=1e-12)
    np.testing.assert_allclose(cam["velocity"], [[3.0, 0.0, 0.0], [0.0, 0.0, 5.0]], atol=1e-12)
    corners = box_corners(cam["center"], cam["size"], cam["yaw"])
    assert corners[0, :4, 0].min() > corners[0, 4:, 0].max()  # front face (0-3) lies along the heading
    assert corners[0, [0, 1, 4, 5], 1].max() < corners[0, [2, 3, 6, 7], 1].min()  # top corners have smaller y


def random_global_boxes(rng: np.random.Generator, n: int, ego2global: np.ndarray) -> dict[str, np.ndarray]:
    centre_ego = np.column_stack([rng.uniform(-30, 30, n), rng.uniform(-30, 30, n), rng.uniform(0.3, 2.0, n)])
    return {
        "center": centre_ego @ ego2global[:3, :3].T + ego2global[:3, 3],
        "size": rng.uniform(0.4, 10.0, size=(n, 3)),
        "rotation": np.array([yaw_to_quaternion(y) for y in rng.uniform(-math.pi, math.pi, n)]),
        "velocity": rng.uniform(-8, 8, size=(n, 2)),
    }


@pytest.mark.parametrize("channel", CAMERAS)
def test_to_camera_and_back_returns_the_global_boxes(channel: str) -> None:
    rng = np.random.default_rng(CAMERAS.index(channel))
    ego2global = transform_matrix(yaw_to_quaternion(rng.uniform(-3, 3)), [812.0, 1604.5, 0.0])
    sensor2ego = camera_sensor2ego(channel)
    boxes = random_global_boxes(rng, 50, ego2global)
    cam = boxes_to_camera(boxes, ego2global, sensor2ego)
    back = boxes_from_camera(cam["center"], cam["size"], cam["yaw"], cam["velocity"][:, [0, 2]], ego2global, sensor2ego)
    np.testing.assert_allclose(back["center"], boxes["center"], atol=1e-9)
    np.testing.assert_allclose(back["size"], boxes["size"])
    np.testing.assert_allclose(back["velocity"], boxes["velocity"], atol=1e-9)
    np.testing.assert_allclose(np.abs(cam["velocity"][:, 1]), 0.0, atol=1e-9)  # ground motion: no camera-y part
    dots = np.abs(np.sum(back["rotation"] * boxes["rotation"], axis=1))  # same rotation up to quaternion sign
    np.testing.assert_allclose(dots, 1.0, atol=1e-9)


def test_nan_velocity_stays_nan() -> None:
    boxes = {"center": [[5.0, 1.0, 1.0]], "size": [[1, 2, 1]], "rotation": [[1.0, 0, 0, 0]], "velocity": [[np.nan] * 2]}
    cam = boxes_to_camera(boxes, np.eye(4), camera_sensor2ego("CAM_FRONT"))
    assert np.isnan(cam["velocity"][0, [0, 2]]).all()


def test_corners_agree_with_the_devkit_box_in_the_camera() -> None:
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    rng = np.random.default_rng(5)
    ego2global = transform_matrix(yaw_to_quaternion(0.7), [300.0, 900.0, 0.0])
    sensor2ego = camera_sensor2ego("CAM_FRONT_LEFT")  # level, as the synthetic rig (a camera yaw is exact then)
    boxes = random_global_boxes(rng, 20, ego2global)
    cam = boxes_to_camera(boxes, ego2global, sensor2ego)
    corners = box_corners(cam["center"], cam["size"], cam["yaw"])
    for i in range(20):
        box = Box(boxes["center"][i], boxes["size"][i], Quaternion(boxes["rotation"][i]))
        box.translate(-ego2global[:3, 3])
        box.rotate(Quaternion(matrix=ego2global[:3, :3]).inverse)
        box.translate(-sensor2ego[:3, 3])
        box.rotate(Quaternion(matrix=sensor2ego[:3, :3]).inverse)
        np.testing.assert_allclose(corners[i], box.corners().T, atol=1e-9)


def test_each_box_centre_projects_onto_its_drawing(nuscenes_packed: Path) -> None:
    """Every box is seen by some camera, and where its centre projects the image is not background."""
    reader = PackReader(nuscenes_packed / "val_lmdb")
    checked = 0
    for index in range(len(reader)):
        sample = reader[index]
        seen = np.zeros(len(sample["boxes"]["label"]), dtype=bool)
        for channel, camera in sample["cameras"].items():
            cam = boxes_to_camera(sample["boxes"], camera["ego2global"], camera["sensor2ego"])
            np.testing.assert_allclose(camera["intrinsic"], camera_intrinsic(channel, camera["width"]))
            image = cv2.imdecode(np.frombuffer(camera["image"], np.uint8), cv2.IMREAD_COLOR).astype(np.int32)
            background = background_image(camera["intrinsic"], camera["width"], camera["height"]).astype(np.int32)
            depth = cam["center"][:, 2]
            uv = project_points(cam["center"][depth > 0], camera["intrinsic"])
            for i, (u, v) in zip(np.flatnonzero(depth > 0), uv, strict=True):
                if 0 <= u < camera["width"] and 0 <= v < camera["height"]:
                    seen[i] = True
                    if 2.0 < depth[i] < 25.0:
                        x, y = int(u), int(v)
                        assert np.abs(image[y, x] - background[y, x]).sum() > 40, (channel, i, u, v)
                        checked += 1
        assert seen.all(), sample["sample_token"]
    assert checked > 20
