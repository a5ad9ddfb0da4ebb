"""Synthetic CarFusion: drawn cars in CarFusion's own raw layout, for the demo and the tests.

The real dataset cannot be downloaded here, so this writes what the packer reads —
``<dst>/{train,test}/car_<seq>/{images_jpg,gt,bb}/<vid>_<frame>.{jpg,txt}`` — with
content a small network can learn: each car is a 3D model (a body box, a cabin frustum
with a roof, four wheels, four lights) seen by a perspective camera at a random yaw,
elevation, distance, position and colour. Keypoints come from the same 3D geometry that
is drawn, so they sit exactly on the drawn features.

Visibility follows the annotation convention: a keypoint on a face turned away from the
camera (the far side) is occluded (1), one covered by a nearer car is occluded (1), a few
random ones are "not labelled" (0), the rest are visible (2). Left and right are the
car's own sides and the camera is a proper (unmirrored) projection, so mirroring an image
really does swap the left/right labels of :data:`hat_keypoint.keypoints.FLIP_PAIRS`.

Every frame draws from its own generator, seeded by ``(seed, split, sequence, frame)``:
the output is identical for a seed and independent of the other frames' parameters.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hat import console
from hat.errors import UserError

#: Sub-pixel precision of cv2's polygon filling (coordinates are multiplied by 2**4).
_SHIFT = 4
_JPEG_QUALITY = 90
#: Probability that a keypoint is written as "not labelled" (visibility 0).
_UNLABELLED_P = 0.03
#: Cars placed further apart than this box IoU when possible, so that no car is buried.
_MAX_IOU = 0.25
_VISIBLE, _OCCLUDED, _UNLABELLED = 2, 1, 0


def generate_carfusion(
    dst: Path,
    *,
    seed: int,
    num_sequences: int = 3,
    frames_per_sequence: int = 40,
    image_size: int = 320,
    cars_per_frame: int = 2,
) -> None:
    """Write a synthetic CarFusion under ``dst``: ``num_sequences`` train sequences, half as many test ones.

    Frames are square, ``image_size`` pixels. Refuses to write into a ``dst`` that already
    holds a split (stale sequences of an earlier run would silently mix in); a run that
    fails leaves nothing behind.
    """
    if num_sequences < 1 or frames_per_sequence < 1 or cars_per_frame < 1:
        raise UserError(
            "synthetic CarFusion needs at least one sequence, one frame and one car per frame",
            hint="pass positive num_sequences, frames_per_sequence and cars_per_frame",
        )
    if image_size < 64:
        raise UserError(f"image_size {image_size} is too small to draw cars", hint="use image_size >= 64")
    dst = Path(dst)
    splits = {"train": num_sequences, "test": max(1, num_sequences // 2)}
    for split in splits:
        if (dst / split).exists() and any((dst / split).iterdir()):
            raise UserError(
                f"{dst / split} already exists and is not empty",
                hint="choose another --dst, or remove the old synthetic data first",
            )
    tmp = dst / f".synth-{uuid.uuid4().hex[:8]}"
    try:
        total = sum(splits.values()) * frames_per_sequence
        with console.progress() as bar:
            task = bar.add_task("synth carfusion", total=total)
            for split_index, (split, count) in enumerate(splits.items()):
                for seq in range(count):
                    seq_dir = tmp / split / f"car_{split}{seq + 1}"
                    for sub in ("images_jpg", "gt", "bb"):
                        (seq_dir / sub).mkdir(parents=True)
                    for i in range(frames_per_sequence):
                        rng = np.random.default_rng([seed % 2**64, split_index, seq, i])
                        stem = f"{i % 2 + 1}_{i // 2:05d}"
                        _write_frame(seq_dir, stem, rng, image_size, cars_per_frame)
                        bar.advance(task)
        for split in splits:
            if (dst / split).exists():
                (dst / split).rmdir()  # empty, checked above
            (tmp / split).rename(dst / split)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_frame(seq_dir: Path, stem: str, rng: np.random.Generator, size: int, num_cars: int) -> None:
    img, cars = render_frame(rng, size, num_cars)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a synthetic frame as JPEG")
    (seq_dir / "images_jpg" / f"{stem}.jpg").write_bytes(jpg.tobytes())
    gt_lines, bb_lines = [], []
    for instance, car in enumerate(cars, start=1):
        for slot, ((x, y), vis) in enumerate(zip(car.slots, car.visibility, strict=True), start=1):
            gt_lines.append(f"{x:.2f},{y:.2f},{slot},{instance},{vis}")
        x1, y1, x2, y2 = car.box
        bb_lines.append(f"{x1},{y1},{x2},{y2},{instance}")
    (seq_dir / "gt" / f"{stem}.txt").write_text("\n".join(gt_lines) + "\n")
    (seq_dir / "bb" / f"{stem}.txt").write_text("\n".join(bb_lines) + "\n")


# -- one car's 3D model ------------------------------------------------------------------
# Car frame: x forward, y to the car's left, z up (right-handed). The right side is y < 0.


@dataclass
class CarModel:
    """Dimensions of one car, in car units (about metres)."""

    length: float
    width: float
    z_bottom: float  # underside of the body
    z_body: float  # top of the body (bonnet / boot)
    z_roof: float
    cabin_x: tuple[float, float]  # back, front x of the cabin where it meets the body
    roof_x: tuple[float, float]  # back, front x of the roof
    roof_half_width: float
    wheel_x: tuple[float, float]  # back, front axle x
    wheel_r: float
    light_half_spacing: float
    light_z: tuple[float, float]  # back, front light height

    @staticmethod
    def random(rng: np.random.Generator) -> CarModel:
        length = rng.uniform(3.8, 5.0)
        width = rng.uniform(1.6, 2.0)
        wheel_r = rng.uniform(0.3, 0.36)
        z_body = rng.uniform(0.9, 1.1)
        cabin = (-length / 2 + rng.uniform(0.3, 0.6), length / 2 - rng.uniform(1.0, 1.5))
        roof = (cabin[0] + rng.uniform(0.25, 0.5), cabin[1] - rng.uniform(0.4, 0.7))
        axle = length / 2 - rng.uniform(0.7, 0.9)
        return CarModel(
            length=length,
            width=width,
            z_bottom=wheel_r * rng.uniform(0.55, 0.8),
            z_body=z_body,
            z_roof=z_body + rng.uniform(0.4, 0.6),
            cabin_x=cabin,
            roof_x=roof,
            roof_half_width=width / 2 - rng.uniform(0.15, 0.3),
            wheel_x=(-axle, axle),
            wheel_r=wheel_r,
            light_half_spacing=width / 2 - rng.uniform(0.15, 0.3),
            light_z=(z_body - rng.uniform(0.12, 0.25), z_body - rng.uniform(0.15, 0.3)),
        )

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The 14 CarFusion slots (1-based order) as (14, 3) points and (14, 3) face normals.

        A slot's normal is that of the face it lies on, which decides whether the camera
        sees it; the centre, inside the car, gets a zero normal (never on the far side).
        """
        half_l, half_w = self.length / 2, self.width / 2
        back, front = self.wheel_x
        lb, lf = self.light_z
        ly = self.light_half_spacing
        rb, rf = self.roof_x
        ry = self.roof_half_width
        r = self.wheel_r
        right, left, fwd, bwd, up = (0, -1, 0), (0, 1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1)
        table = [
            ((front, -half_w, r), right),  # 1 right front wheel
            ((front, half_w, r), left),  # 2 left front wheel
            ((back, -half_w, r), right),  # 3 right back wheel
            ((back, half_w, r), left),  # 4 left back wheel
            ((half_l, -ly, lf), fwd),  # 5 right front light
            ((half_l, ly, lf), fwd),  # 6 left front light
            ((-half_l, -ly, lb), bwd),  # 7 right back light
            ((-half_l, ly, lb), bwd),  # 8 left back light
            ((-half_l, -half_w / 2, self.z_bottom + 0.05), bwd),  # 9 exhaust, by the right back wheel
            ((rf, -ry, self.z_roof), up),  # 10 right front roof
            ((rf, ry, self.z_roof), up),  # 11 left front roof
            ((rb, -ry, self.z_roof), up),  # 12 right back roof
            ((rb, ry, self.z_roof), up),  # 13 left back roof
            ((0.0, 0.0, (self.z_bottom + self.z_body) / 2), (0, 0, 0)),  # 14 centre
        ]
        points = np.array([p for p, _ in table], dtype=np.float64)
        normals = np.array([n for _, n in table], dtype=np.float64)
        return points, normals

    def body(self) -> np.ndarray:
        """The body box's 8 corners."""
        hl, hw = self.length / 2, self.width / 2
        return _box_corners((-hl, hl), (-hw, hw), (self.z_bottom, self.z_body), (-hl, hl), (-hw, hw))

    def cabin(self) -> np.ndarray:
        """The cabin frustum's 8 corners: its base on the body, its roof smaller on top."""
        hw = self.width / 2 - 0.05
        return _box_corners(
            self.cabin_x,
            (-hw, hw),
            (self.z_body, self.z_roof),
            self.roof_x,
            (-self.roof_half_width, self.roof_half_width),
        )

    def wheel(self, x: float, y: float, samples: int = 24) -> np.ndarray:
        """A wheel's rim as a polygon in the side plane, just outside the body."""
        t = np.linspace(0, 2 * math.pi, samples, endpoint=False)
        side = y + math.copysign(0.02, y)
        return np.stack(
            [x + self.wheel_r * np.cos(t), np.full_like(t, side), self.wheel_r + self.wheel_r * np.sin(t)], 1
        )


def _box_corners(
    bx: tuple[float, float],
    by: tuple[float, float],
    z: tuple[float, float],
    tx: tuple[float, float],
    ty: tuple[float, float],
) -> np.ndarray:
    """Corners of a frustum: bottom rectangle ``bx x by`` at z[0], top ``tx x ty`` at z[1].

    Order: bottom 0..3 then top 4..7, each going (x0,y0), (x1,y0), (x1,y1), (x0,y1).
    """
    bottom = [(bx[0], by[0]), (bx[1], by[0]), (bx[1], by[1]), (bx[0], by[1])]
    top = [(tx[0], ty[0]), (tx[1], ty[0]), (tx[1], ty[1]), (tx[0], ty[1])]
    return np.array([(x, y, z[0]) for x, y in bottom] + [(x, y, z[1]) for x, y in top], dtype=np.float64)


#: Faces of a frustum from :func:`_box_corners`, as corner indices.
_FACES = {
    "bottom": (0, 1, 2, 3),
    "top": (4, 5, 6, 7),
    "right": (0, 1, 5, 4),  # y0 < y1: y0 is the right side
    "front": (1, 2, 6, 5),
    "left": (2, 3, 7, 6),
    "back": (3, 0, 4, 7),
}


def camera_rotation(yaw: float, pitch: float) -> np.ndarray:
    """Car frame -> camera frame (x right, y down, z forward), a proper rotation.

    The car turns by ``yaw`` about its up axis; the camera looks along the world's +y
    axis, tilted down by ``pitch``. With ``yaw = -pi/2`` the car faces the camera and its
    right side appears on the image's left, as a real car's does.
    """
    c, s = math.cos(yaw), math.sin(yaw)
    yaw_m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    base = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]])  # world (x, y, z up) -> camera (x, -z, y)
    cp, sp = math.cos(pitch), math.sin(pitch)
    pitch_m = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return pitch_m @ base @ yaw_m


@dataclass
class _Pose:
    rotation: np.ndarray
    distance: float
    scale: float = 1.0
    offset: tuple[float, float] = (0.0, 0.0)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.rotation.T + np.array([0.0, 0.0, self.distance])

    def project(self, points: np.ndarray) -> np.ndarray:
        """Continuous pixel coordinates (pixel i covers [i, i+1)) of car-frame points."""
        cam = self.to_camera(points)
        uv = cam[:, :2] / cam[:, 2:3]
        return uv * self.scale + np.array(self.offset)

    def faces_camera(self, normal: np.ndarray, point: np.ndarray) -> bool:
        """Whether a face with outward ``normal`` through ``point`` is turned towards the camera."""
        if not np.any(normal):
            return True
        return float(np.dot(self.rotation @ normal, self.to_camera(point[None])[0])) < 0.0


@dataclass
class RenderedCar:
    """One drawn car: its 14 slots in pixels, their visibility, its box and its pixel mask."""

    slots: np.ndarray  # (14, 2) continuous pixel coordinates
    visibility: list[int]
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 of its drawn pixels (x2, y2 exclusive)
    mask: np.ndarray  # (H, W) bool, the car alone


# -- drawing -----------------------------------------------------------------------------
def render_frame(rng: np.random.Generator, size: int, num_cars: int) -> tuple[np.ndarray, list[RenderedCar]]:
    """One BGR frame with ``num_cars`` cars, farthest drawn first, and their annotations."""
    img = _background(rng, size)
    plans = [_plan_car(rng, size) for _ in range(num_cars)]
    plans.sort(key=lambda plan: plan[1].scale / plan[1].distance)  # smallest on screen = farthest
    boxes: list[tuple[float, float, float, float]] = []
    for model, pose, _colour in plans:
        _place(rng, pose, model, size, boxes)
    cars = [_draw_car(img, model, pose, colour, rng) for model, pose, colour in plans]
    for i, car in enumerate(cars):  # keypoints covered by a nearer car are occluded
        for nearer in cars[i + 1 :]:
            for k, (x, y) in enumerate(car.slots):
                col, row = int(math.floor(x)), int(math.floor(y))
                if car.visibility[k] > 0 and 0 <= col < size and 0 <= row < size and nearer.mask[row, col]:
                    car.visibility[k] = _OCCLUDED
    for car in cars:  # annotators skip a few points
        for k in range(len(car.visibility)):
            if rng.random() < _UNLABELLED_P:
                car.visibility[k] = _UNLABELLED
    return img, cars


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Gradient + noise + a few rectangles: varied enough that a model must look at the car."""
    c0, c1 = rng.uniform(30, 220, 3).astype(np.float32), rng.uniform(30, 220, 3).astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    t = np.clip(0.5 + ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle), 0, 1)[..., None]
    # Sensor-like noise: a difference of two uniform bytes (triangular, std 255 / sqrt(6)),
    # several times cheaper than drawing normals and just as good at hiding flat colours.
    raw = np.frombuffer(rng.bytes(2 * size * size * 3), np.uint8).reshape(2, size, size, 3)
    noise = (raw[0].astype(np.float32) - raw[1]) * np.float32(rng.uniform(3, 10) / (255 / math.sqrt(6)))
    img = np.clip(c0 + (c1 - c0) * t + noise, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(size // 30 + 1, size // 3, 2)
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), rng.uniform(0, 255, 3).tolist(), -1)
    return img


def _plan_car(rng: np.random.Generator, size: int) -> tuple[CarModel, _Pose, np.ndarray]:
    """A random car and pose, scaled to 60..160 px wide (less on small frames), not yet placed."""
    model = CarModel.random(rng)
    pose = _Pose(camera_rotation(rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(10, 35))), rng.uniform(9, 14))
    uv = pose.project(np.concatenate([model.body(), model.cabin()]))
    width = float(np.ptp(uv[:, 0]))
    target = rng.uniform(60, 160) * min(1.0, size / 320)
    pose.scale = target / width
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(60, 256), rng.integers(70, 256)]]])
    colour = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float64)
    return model, pose, colour


def _place(rng: np.random.Generator, pose: _Pose, model: CarModel, size: int, boxes: list) -> None:
    """Move the car to a random spot, up to ~15% outside the frame, avoiding heavy overlap."""
    uv = pose.project(np.concatenate([model.body(), model.cabin()]))
    lo, hi = uv.min(0), uv.max(0)
    w, h = hi - lo
    for _attempt in range(20):
        cx = rng.uniform(0.35 * w, size - 0.35 * w)
        cy = rng.uniform(0.35 * h, size - 0.35 * h)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if all(_iou(box, other) < _MAX_IOU for other in boxes):
            break
    boxes.append(box)
    pose.offset = (cx - (lo[0] + hi[0]) / 2, cy - (lo[1] + hi[1]) / 2)


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _draw_car(
    img: np.ndarray, model: CarModel, pose: _Pose, colour: np.ndarray, rng: np.random.Generator
) -> RenderedCar:
    """Draw one car over ``img`` (painter's order) and return its annotations."""
    mask = np.zeros(img.shape[:2], np.uint8)
    points, normals = model.slots()
    visible = [pose.faces_camera(n, p) for p, n in zip(points, normals, strict=True)]
    wheels = [(points[k, 0], points[k, 1], visible[k]) for k in range(4)]
    glass = np.array([70.0, 55.0, 45.0]) * rng.uniform(0.8, 1.3)

    for x, y, near in wheels:  # far wheels first: the body hides most of them
        if not near:
            _draw_wheel(img, mask, model, pose, x, y)
    _draw_solid(img, mask, model.body(), pose, lambda name: colour)
    _draw_solid(img, mask, model.cabin(), pose, lambda name: colour if name == "top" else glass)
    for x, y, near in wheels:
        if near:
            _draw_wheel(img, mask, model, pose, x, y)
    px_per_unit = pose.scale / pose.distance
    radius = max(2.0, 0.11 * px_per_unit)
    for k in range(4, 8):  # lights, only where their face is seen
        if visible[k]:
            tint = (235, 245, 255) if k < 6 else (40, 40, 225)
            _fill(img, mask, _circle(pose.project(points[k : k + 1])[0], radius), tint)

    slots = pose.project(points)
    ys, xs = np.nonzero(mask)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    visibility = [_VISIBLE if v else _OCCLUDED for v in visible]
    return RenderedCar(slots=slots, visibility=visibility, box=box, mask=mask.astype(bool))


def _draw_solid(img: np.ndarray, mask: np.ndarray, corners: np.ndarray, pose: _Pose, colour_of) -> None:
    """The faces of a convex solid that face the camera, shaded by their orientation."""
    centre = corners.mean(0)
    light = np.array([-0.3, -1.0, -0.6])
    light /= np.linalg.norm(light)
    uv = pose.project(corners)
    for name, idx in _FACES.items():
        quad = corners[list(idx)]
        normal = np.cross(quad[1] - quad[0], quad[3] - quad[0])
        if np.dot(normal, quad.mean(0) - centre) < 0:
            normal = -normal
        normal /= np.linalg.norm(normal)
        if not pose.faces_camera(normal, quad.mean(0)):
            continue
        shade = 0.45 + 0.55 * max(0.0, -float(np.dot(pose.rotation @ normal, light)))
        _fill(img, mask, uv[list(idx)], np.clip(colour_of(name) * shade, 0, 255))


def _draw_wheel(img: np.ndarray, mask: np.ndarray, model: CarModel, pose: _Pose, x: float, y: float) -> None:
    rim = model.wheel(x, y)
    _fill(img, mask, pose.project(rim), (25, 25, 25))
    hub = rim.copy()
    hub[:, [0, 2]] = (hub[:, [0, 2]] - [x, model.wheel_r]) * 0.45 + [x, model.wheel_r]
    _fill(img, mask, pose.project(hub), (140, 140, 140))


def _circle(centre: np.ndarray, radius: float, samples: int = 16) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, samples, endpoint=False)
    return centre + radius * np.stack([np.cos(t), np.sin(t)], 1)


def _fill(img: np.ndarray, mask: np.ndarray, polygon: np.ndarray, colour) -> None:
    """Fill a polygon given in continuous coordinates (cv2 puts pixel i's centre at i)."""
    pts = np.round((np.asarray(polygon) - 0.5) * (1 << _SHIFT)).astype(np.int32)[None]
    cv2.fillPoly(img, pts, [float(c) for c in colour], lineType=cv2.LINE_AA, shift=_SHIFT)
    cv2.fillPoly(mask, pts, 1, lineType=cv2.LINE_8, shift=_SHIFT)
