"""Pictures of 3D boxes: each box's eight corners projected through the camera and joined.

Used by ``hat infer fcos3d`` (core's :func:`hat.inferer.save_png` writes the picture).
The front face (the heading) is drawn with a cross so that a box turned the wrong way
round is visible at a glance; classes get fixed colours.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from hat.nuscenes.constants import DETECTION_CLASSES
from hat.nuscenes.geometry import box_corners, project_points

#: BGR colour per detection class, in DETECTION_CLASSES order.
CLASS_COLOURS = (
    (60, 180, 255),
    (40, 90, 230),
    (30, 30, 200),
    (130, 60, 200),
    (200, 60, 160),
    (60, 220, 60),
    (230, 200, 40),
    (230, 130, 30),
    (20, 200, 220),
    (180, 180, 180),
)
#: Corner pairs of a box's edges (devkit corner order: 0-3 front face, 4-7 back face).
EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))
_SHIFT = 4
_MIN_DEPTH = 0.1


def draw_boxes_3d(
    img_bgr: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[int],
    intrinsic: np.ndarray,
    scores: Sequence[float] | None = None,
) -> np.ndarray:
    """A copy of ``img_bgr`` with camera-frame ``boxes`` ``(N, >=7)`` (x, y, z, w, l, h, yaw)
    drawn through ``intrinsic``. Edges with a corner behind the camera are skipped."""
    out = np.array(img_bgr, dtype=np.uint8, copy=True)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, np.asarray(boxes).shape[-1] if len(boxes) else 7)
    if len(boxes) == 0:
        return out
    corners = box_corners(boxes[:, :3], boxes[:, 3:6], boxes[:, 6])
    for i, box in enumerate(corners):
        colour = CLASS_COLOURS[int(labels[i]) % len(CLASS_COLOURS)]
        front = box[:, 2] > _MIN_DEPTH
        uv = project_points(np.where(front[:, None], box, 1.0), intrinsic)
        pts = [tuple(int(round(v * (1 << _SHIFT))) for v in p) for p in uv]
        for a, b in (*EDGES, (0, 2), (1, 3)):
            if front[a] and front[b]:
                cv2.line(out, pts[a], pts[b], colour, 1, cv2.LINE_AA, _SHIFT)
        if front.all():
            text = DETECTION_CLASSES[int(labels[i])]
            if scores is not None:
                text += f" {float(scores[i]):.2f}"
            x, y = uv[:, 0].min(), uv[:, 1].min()
            cv2.putText(out, text, (int(x), max(int(y) - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
    return out
