"""Camera images of a synthetic scene: the boxes drawn as shaded cuboids through the rig's geometry.

Kept apart from the simulation and the tables because it is the one part that decides
what a model can learn from the pictures. Visible faces are filled far to near
(painter's order), each class in its own colour and each face in its own shade (top
brightest, front, left, right, back darkest), so that class, depth, size and heading are
all visible. A box is drawn where the camera's own ego pose puts its annotation, so
``boxes_to_camera`` with the camera's ``ego2global`` lands exactly on the drawing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from hat.nuscenes.geometry import box_corners, boxes_to_camera
from hat.nuscenes.synth.rig import camera_intrinsic, camera_sensor2ego, image_height
from hat.nuscenes.synth.world import Annotation, SceneObject

#: BGR colour of each class, and the shade of each face (front, back, top, bottom, left, right).
_CLASS_COLOUR: dict[str, tuple[int, int, int]] = {  # saturated, so that even a dark face is not grey like the road
    "car": (40, 40, 210),
    "truck": (0, 128, 255),
    "bus": (0, 220, 230),
    "trailer": (200, 80, 20),
    "construction_vehicle": (30, 130, 30),
    "pedestrian": (200, 50, 200),
    "motorcycle": (220, 210, 30),
    "bicycle": (160, 40, 110),
    "traffic_cone": (40, 255, 150),
    "barrier": (190, 150, 255),
}
# Faces as corner indices of hat.nuscenes.geometry.box_corners, each with its shade.
_FACES = (
    ((0, 1, 2, 3), 1.0),  # front (+x, the heading)
    ((4, 5, 6, 7), 0.5),  # back
    ((0, 1, 5, 4), 1.2),  # top
    ((2, 3, 7, 6), 0.35),  # bottom
    ((0, 3, 7, 4), 0.8),  # left (+y)
    ((1, 2, 6, 5), 0.65),  # right
)
_NEAR = 0.1  # metres: faces are clipped to z >= this in front of the camera
_SHIFT = 4  # cv2 sub-pixel bits
_JPEG_QUALITY = 90


def packed_boxes(annotations: Sequence[Annotation]) -> dict[str, np.ndarray]:
    """Annotations as a packed-style ``boxes`` map (global frame, no velocity), as ``boxes_to_camera`` takes."""
    n = len(annotations)
    return {
        "center": np.array([a.center for a in annotations]).reshape(n, 3),
        "size": np.array([a.size for a in annotations]).reshape(n, 3),
        "rotation": np.array([a.rotation for a in annotations]).reshape(n, 4),
        "velocity": np.zeros((n, 2)),
    }


@dataclass
class Camera:
    """One camera of the rig at the chosen resolution, with its empty-world background."""

    channel: str
    width: int
    height: int = field(init=False)
    intrinsic: np.ndarray = field(init=False)
    sensor2ego: np.ndarray = field(init=False)
    background: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.height = image_height(self.width)
        self.intrinsic = camera_intrinsic(self.channel, self.width)
        self.sensor2ego = camera_sensor2ego(self.channel)
        self.background = background_image(self.intrinsic, self.width, self.height)

    def render(
        self, boxes: dict[str, np.ndarray], objects: Sequence[SceneObject], ego2global: np.ndarray
    ) -> np.ndarray:
        """One image: the background, then every box's visible faces far to near."""
        image = self.background.copy()
        cam = boxes_to_camera(boxes, ego2global, self.sensor2ego)
        corners = box_corners(cam["center"], cam["size"], cam["yaw"])  # (N, 8, 3)
        order = np.argsort(-np.linalg.norm(cam["center"], axis=1))
        for i in order:
            if self._in_view(corners[i]):
                colour = np.array(_CLASS_COLOUR[objects[i].cls], dtype=np.float64) * objects[i].shade
                self._draw_box(image, corners[i], colour)
        return image

    def _in_view(self, box: np.ndarray) -> bool:
        """False for a box wholly behind the near plane, or wholly in front but projecting beside the image."""
        if box[:, 2].max() <= _NEAR:
            return False
        if box[:, 2].min() > _NEAR:
            intrinsic = self.intrinsic
            uv = box[:, :2] / box[:, 2:3] * intrinsic[[0, 1], [0, 1]] + intrinsic[:2, 2]
            if (uv.max(axis=0) < 0).any() or uv[:, 0].min() > self.width or uv[:, 1].min() > self.height:
                return False
        return True

    def _draw_box(self, image: np.ndarray, box: np.ndarray, colour: np.ndarray) -> None:
        """Fill and outline the faces of ``box`` (8 camera-frame corners) that face the camera."""
        centre = box.mean(axis=0)
        for face, shade in _FACES:
            points = box[list(face)]
            face_centre = points.sum(axis=0) / 4.0
            if np.dot(face_centre - centre, face_centre) >= 0:  # faces away from the camera
                continue
            polygon = _clip_near(points)
            if len(polygon) < 3:
                continue
            pixels = self._to_pixels(polygon)
            fill = tuple(int(v) for v in np.clip(colour * shade, 0, 255))
            cv2.fillConvexPoly(image, pixels, fill, lineType=cv2.LINE_AA, shift=_SHIFT)
            edge = tuple(int(v) for v in np.clip(colour * shade * 0.45, 0, 255))
            cv2.polylines(image, [pixels], True, edge, 1, lineType=cv2.LINE_AA, shift=_SHIFT)

    def _to_pixels(self, polygon: np.ndarray) -> np.ndarray:
        """Camera-frame points (K, 3), all in front of the near plane, as cv2's fixed-point pixels."""
        uvw = polygon @ self.intrinsic.T
        pixels = np.round(uvw[:, :2] / uvw[:, 2:3] * (1 << _SHIFT)).astype(np.int32)
        if np.abs(pixels).max() > 2**26:  # far outside the image: cv2 cannot take it
            pixels = np.clip(pixels, -(2**26), 2**26)
        return pixels


def encode_jpeg(image: np.ndarray) -> bytes:
    """``image`` (BGR) as the bytes of a JPEG file."""
    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a synthetic camera image as JPEG")
    return jpg.tobytes()


def _clip_near(points: np.ndarray) -> np.ndarray:
    """A convex polygon (K, 3) clipped to the half-space z >= _NEAR (Sutherland-Hodgman, one plane)."""
    if points[:, 2].min() >= _NEAR:
        return points
    out = []
    for a, b in zip(points, np.roll(points, -1, axis=0), strict=True):
        a_in, b_in = a[2] >= _NEAR, b[2] >= _NEAR
        if a_in:
            out.append(a)
        if a_in != b_in:
            s = (_NEAR - a[2]) / (b[2] - a[2])
            out.append(a + s * (b - a))
    return np.array(out).reshape(-1, 3)


def background_image(intrinsic: np.ndarray, width: int, height: int) -> np.ndarray:
    """Sky above the horizon of a level camera (row cy), ground below, both as soft gradients."""
    horizon = intrinsic[1, 2]
    rows = np.arange(height, dtype=np.float64)[:, None]
    sky_t = np.clip(rows / max(horizon, 1.0), 0.0, 1.0)
    sky = np.array([225.0, 180.0, 135.0]) * (1 - sky_t) + np.array([245.0, 225.0, 205.0]) * sky_t
    ground_t = np.clip((rows - horizon) / max(height - horizon, 1.0), 0.0, 1.0)
    ground = np.array([150.0, 155.0, 150.0]) * (1 - ground_t) + np.array([85.0, 95.0, 90.0]) * ground_t
    column = np.where(rows < horizon, sky, ground)  # (H, 3)
    return np.ascontiguousarray(np.broadcast_to(column[:, None, :], (height, width, 3)).round().astype(np.uint8))
