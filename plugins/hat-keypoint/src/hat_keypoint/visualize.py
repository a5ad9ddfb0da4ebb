"""Pictures of car keypoints: the wireframe and points drawn over an image.

Used by ``hat infer keypoint`` and for looking at packed or synthetic data (core's
:func:`hat.inferer.save_png` writes the picture). The car's left side and right side
get different colours so that a left/right mix-up (a flip without the pair swap, say)
is visible at a glance.
"""

from __future__ import annotations

import cv2
import numpy as np

from hat_keypoint.keypoints import IS_LEFT, NUM_KEYPOINTS, SKELETON

#: BGR colours: the car's left side, its right side, and lines crossing between them.
LEFT_COLOUR = (60, 220, 60)
RIGHT_COLOUR = (40, 140, 255)
CROSS_COLOUR = (230, 230, 230)
_SHIFT = 4


def draw_keypoints(
    img_bgr: np.ndarray,
    keypoints: np.ndarray,
    *,
    skeleton: bool = True,
    radius: int = 3,
) -> np.ndarray:
    """A copy of ``img_bgr`` with the keypoints (and the skeleton between them) drawn.

    ``keypoints`` is ``(12, 2)`` or ``(12, 3)`` in continuous pixel coordinates (pixel
    ``i`` covers ``[i, i + 1)``); with a third column, points whose flag is 0 (invalid,
    not predicted) and lines touching them are left out. A grayscale image is drawn on
    as BGR.
    """
    kps = np.asarray(keypoints, dtype=np.float64)
    if kps.ndim != 2 or kps.shape[0] != NUM_KEYPOINTS or kps.shape[1] not in (2, 3):
        raise ValueError(f"keypoints must have shape ({NUM_KEYPOINTS}, 2) or ({NUM_KEYPOINTS}, 3), got {kps.shape}")
    img = np.asarray(img_bgr)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"img_bgr must be an HxW or HxWx3 uint8 image, got {img.dtype} {img.shape}")
    out = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()
    valid = kps[:, 2] > 0 if kps.shape[1] == 3 else np.ones(NUM_KEYPOINTS, bool)
    valid &= np.isfinite(kps[:, :2]).all(1)
    pts = [_fixed(p) for p in kps[:, :2]]
    thickness = max(1, radius // 2)
    if skeleton:
        for i, j in SKELETON:
            if valid[i] and valid[j]:
                colour = _side_colour(i) if IS_LEFT[i] == IS_LEFT[j] else CROSS_COLOUR
                cv2.line(out, pts[i], pts[j], colour, thickness, cv2.LINE_AA, _SHIFT)
    for k in range(NUM_KEYPOINTS):
        if valid[k]:
            cv2.circle(out, pts[k], radius << _SHIFT, _side_colour(k), -1, cv2.LINE_AA, _SHIFT)
    return out


def _side_colour(index: int) -> tuple[int, int, int]:
    return LEFT_COLOUR if IS_LEFT[index] else RIGHT_COLOUR


def _fixed(point: np.ndarray) -> tuple[int, int]:
    """cv2 fixed-point coordinates of a continuous position (pixel i's centre is i + 0.5)."""
    return int(round((point[0] - 0.5) * (1 << _SHIFT))), int(round((point[1] - 0.5) * (1 << _SHIFT)))
