"""Drawing keypoints: a PNG of the input's size, changed where points and lines are."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hat.inferer import save_png
from hat_keypoint.visualize import LEFT_COLOUR, RIGHT_COLOUR, draw_keypoints

POINTS = (
    np.array(
        [
            (20, 70),
            (60, 72),
            (25, 100),
            (65, 102),
            (15, 50),
            (55, 52),
            (28, 85),
            (68, 87),
            (25, 20),
            (50, 21),
            (30, 40),
            (55, 41),
        ],
        dtype=np.float32,
    )
    + 0.5
)  # pixel centres


def test_draws_points_and_skeleton_and_writes_a_png(tmp_path: Path) -> None:
    img = np.full((120, 90, 3), 100, np.uint8)
    drawn = draw_keypoints(img, POINTS, radius=3)
    assert drawn.shape == img.shape and (img == 100).all()  # a copy; the input is untouched
    path = save_png(tmp_path / "sub" / "cars.png", drawn)
    assert path.suffix == ".png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = cv2.imread(str(path))
    assert back.shape == (120, 90, 3)
    np.testing.assert_array_equal(back, drawn)  # PNG is lossless
    for k, (x, y) in enumerate(POINTS.astype(int)):
        colour = LEFT_COLOUR if k % 2 else RIGHT_COLOUR
        assert tuple(int(c) for c in back[y, x]) == colour  # each point drawn in its side's colour
    assert (back[115:, 80:] == 100).all()  # far from everything: unchanged
    without_skeleton = draw_keypoints(img, POINTS, skeleton=False, radius=3)
    assert (without_skeleton != img).any(2).sum() < (drawn != img).any(2).sum()  # the lines add pixels


def test_invalid_points_are_not_drawn() -> None:
    img = np.full((120, 90, 3), 100, np.uint8)
    flags = np.zeros((12, 1), np.float32)
    assert (draw_keypoints(img, np.concatenate([POINTS, flags], 1)) == img).all()
    flags[0] = 1
    drawn = draw_keypoints(img, np.concatenate([POINTS, flags], 1))
    changed = np.argwhere((drawn != img).any(2))
    assert len(changed) and (np.abs(changed - POINTS[0, ::-1].astype(int)).max(1) <= 4).all()  # only point 0


def test_grayscale_input_and_bad_shapes() -> None:
    assert draw_keypoints(np.zeros((120, 90), np.uint8), POINTS).shape == (120, 90, 3)
    with pytest.raises(ValueError, match="keypoints must have shape"):
        draw_keypoints(np.zeros((10, 10, 3), np.uint8), POINTS[:5])
