"""FCOS3DBBoxCoder: encode/decode are inverse, the direction trick recovers any yaw,
and the camera-frame helpers agree with hat.nuscenes.geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hat_fcos3d.model.coder import (
    FCOS3DBBoxCoder,
    box_corners,
    boxes_2d_from_3d,
    decode_yaw,
    direction_target,
    project_points,
    unproject_points,
    wrap_angle,
)
from tests.fcos3d.helpers import intrinsic, random_scene


def angle_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return wrap_angle(a - b).abs()


@pytest.mark.parametrize("norm_on_bbox", [True, False])
def test_encode_decode_round_trip(norm_on_bbox: bool) -> None:
    scene = random_scene(8, seed=3)
    boxes, K = scene["gt_boxes_3d"].double(), scene["intrinsic"].double()
    velocity = torch.nan_to_num(boxes[:, 7:9])
    gen = torch.Generator().manual_seed(0)
    strides = torch.tensor([8.0, 16, 32, 64, 128, 8, 16, 32], dtype=torch.float64)
    points = (
        project_points(boxes[:, :3], K)
        + (torch.rand(8, 2, generator=gen, dtype=torch.float64) - 0.5) * strides[:, None]
    )
    coder = FCOS3DBBoxCoder(norm_on_bbox=norm_on_bbox)
    codes, direction = coder.encode(boxes[:, :3], boxes[:, 3:6], boxes[:, 6], velocity, points, strides, K)
    assert codes.shape == (8, 9) and direction.shape == (8,)
    if norm_on_bbox:  # offsets within the random jitter, in strides
        assert float(codes[:, :2].abs().max()) <= 0.5
    torch.testing.assert_close(codes[:, 2], torch.log(boxes[:, 2]))
    decoded = coder.decode(codes, direction, points, strides, K)
    torch.testing.assert_close(decoded["center"], boxes[:, :3], atol=1e-9, rtol=0)
    torch.testing.assert_close(decoded["size"], boxes[:, 3:6])
    torch.testing.assert_close(decoded["velocity"], velocity)
    assert float(angle_error(decoded["yaw"], boxes[:, 6]).max()) < 1e-9
    torch.testing.assert_close(decoded["center_2d"], project_points(boxes[:, :3], K))


def test_direction_trick_recovers_yaw_in_every_quadrant() -> None:
    # every quadrant, both sides of each direction-bin edge (pi/4, -3pi/4) and of +-pi
    eps = 1e-3
    yaws = torch.tensor(
        [0.1, 1.2, 2.0, 3.0, -0.3, -1.5, -2.5, -3.1, math.pi / 4 - eps, math.pi / 4 + eps,
         -3 * math.pi / 4 - eps, -3 * math.pi / 4 + eps, math.pi - eps, -math.pi + eps, 0.0, math.pi / 2],
        dtype=torch.float64,
    )  # fmt: skip
    direction = direction_target(yaws)
    assert set(direction.tolist()) == {0, 1}
    # bin 0 is [pi/4, 5pi/4): yaws of 1.2 and 2.0 rad are in it, -0.3 and -1.5 are not
    assert direction[1] == 0 and direction[2] == 0 and direction[4] == 1 and direction[5] == 1
    for k in (-2, -1, 0, 1, 2):  # the regression is only meaningful modulo pi
        decoded = decode_yaw(yaws + k * math.pi, direction)
        assert float(angle_error(decoded, yaws).max()) < 1e-9, k
        assert bool(((decoded >= -math.pi) & (decoded < math.pi)).all())
    # the wrong bin gives the opposite heading
    flipped = decode_yaw(yaws, 1 - direction)
    assert float((angle_error(flipped, yaws) - math.pi).abs().max()) < 1e-9


def test_direction_offset_is_configurable() -> None:
    yaws = torch.linspace(-math.pi, math.pi - 1e-3, 101, dtype=torch.float64)
    for offset in (0.0, math.pi / 4, -1.0):
        direction = direction_target(yaws, offset)
        assert float(angle_error(decode_yaw(yaws + math.pi, direction, offset), yaws).max()) < 1e-9


def test_unproject_inverts_project() -> None:
    K = intrinsic().double()
    K[0, 1] = 0.7  # skew too
    points = torch.tensor([[1.0, -0.5, 10.0], [-3.0, 1.2, 4.0], [0.0, 0.0, 55.0]], dtype=torch.float64)
    pixels = project_points(points, K)
    torch.testing.assert_close(unproject_points(pixels, points[:, 2], K), points)


def test_corners_match_core_geometry() -> None:
    from hat.nuscenes import geometry

    scene = random_scene(5, seed=1)
    boxes = scene["gt_boxes_3d"].double()
    ours = box_corners(boxes[:, :3], boxes[:, 3:6], boxes[:, 6]).numpy()
    theirs = geometry.box_corners(boxes[:, :3].numpy(), boxes[:, 3:6].numpy(), boxes[:, 6].numpy())
    for a, b in zip(ours, theirs, strict=True):  # same corner sets (orders differ)
        np.testing.assert_allclose(a[np.lexsort(a.T)], b[np.lexsort(b.T)], atol=1e-9)
    # heading of yaw 0 is camera +x: the front face has the larger x
    corners = box_corners(torch.zeros(1, 3), torch.tensor([[1.0, 4.0, 1.5]]), torch.zeros(1))[0]
    assert float(corners[:, 0].max()) == pytest.approx(2.0) and float(corners[:, 2].max()) == pytest.approx(0.5)
    assert float(corners[:, 1].max()) == pytest.approx(0.75)


def test_boxes_2d_enclose_projected_corners_and_clip() -> None:
    K = intrinsic()
    center = torch.tensor([[0.0, 0.0, 10.0], [8.0, 0.0, 6.0]])
    size = torch.tensor([[2.0, 4.0, 1.5], [2.0, 4.0, 1.5]])
    yaw = torch.tensor([0.3, -1.0])
    unclipped = boxes_2d_from_3d(center, size, yaw, K)
    pixels = project_points(box_corners(center, size, yaw), K)
    torch.testing.assert_close(unclipped[:, :2], pixels.amin(dim=1))
    torch.testing.assert_close(unclipped[:, 2:], pixels.amax(dim=1))
    clipped = boxes_2d_from_3d(center, size, yaw, K, image_hw=(256, 384))
    assert float(clipped[:, 0::2].max()) <= 384 and float(clipped[:, 0::2].min()) >= 0
    assert float(clipped[1, 2]) == 384  # the second box leaves the image on the right
    # a box straddling the image plane still gets a finite box reaching the border
    straddling = boxes_2d_from_3d(torch.tensor([[1.0, 0.0, 0.5]]), size[:1], yaw[:1], K, image_hw=(256, 384))
    assert bool(torch.isfinite(straddling).all())
