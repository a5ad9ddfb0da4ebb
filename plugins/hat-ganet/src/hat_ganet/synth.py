"""Synthetic CULane: drawn road scenes in CULane's own raw layout, for the demo and the tests.

The real dataset cannot be downloaded here, so this writes what the packer reads::

    <dst>/driver_<n>_30frame/<video>.MP4/<frame>.jpg          1640x590 frames
    <dst>/driver_<n>_30frame/<video>.MP4/<frame>.lines.txt    one lane a line, "x y x y ..." bottom-up
    <dst>/list/train_gt.txt, train.txt, val_gt.txt, val.txt, test.txt   (paths with a leading slash)
    <dst>/list/test_split/test0_normal.txt ... test8_night.txt          (paths without one, as CULane's)

Every scene is a flat road seen by a pinhole camera: lane boundaries are curves
``X(Z) = X0 + a Z + b Z^2`` on the ground (lateral offset ``X`` at depth ``Z``), projected
exactly, so image row ``v`` sees depth ``Z = f H / (v - horizon)`` and column
``u = cx + (v - horizon) X(Z) / H``. The painted markings (solid or dashed, white or
yellow, as wide as real ones in perspective) and the annotation come from the same curve:
the ``.lines.txt`` points are the curve at rows 590, 580, ... (every 10 px of height,
bottom-up, as CULane samples its lanes), kept while inside the image, and, as in CULane,
lanes are annotated through dash gaps and behind cars.

Each frame is of one kind, one of :data:`CATEGORIES` (the nine test categories):
``crowd`` puts many occluding cars on the road, ``hlight`` a dusk scene with headlight
glare, ``shadow`` large shadows across the road, ``noline`` worn markings of little
contrast (still annotated), ``arrow`` arrows painted in the lanes, ``curve`` strong
curvature, ``cross`` a crossroad (a stop line and a zebra crossing, no lanes), ``night`` a
dark frame lit by the car's own headlights. Test frames cycle through the kinds so that
every ``test_split`` list is populated; train and val frames draw their kind at random
with the same looks, so that a small network sees everything it is tested on.

Every frame draws from its own generator, seeded by ``(seed, driver, video, frame)``: the
output is identical for a seed, and one frame does not depend on the others' parameters.
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

#: The nine CULane test categories, in the order of the test_split files (test0 ... test8).
CATEGORIES = ("normal", "crowd", "hlight", "shadow", "noline", "arrow", "curve", "cross", "night")
WIDTH, HEIGHT = 1640, 590
#: Annotated points every this many pixels of height, from the bottom row up (CULane's sampling).
ROW_STEP = 10
#: CULane frames are every 30th frame of a video, named by their frame number.
FRAME_STRIDE = 30
_JPEG_QUALITY = 90
_SHIFT = 3  # sub-pixel bits of cv2's polygon drawing
_FOCAL = 1000.0
#: How often train/val frames are of each kind (the same order as CATEGORIES).
_TRAIN_KIND_WEIGHTS = np.array([3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 1.2])


def split_list_name(index: int) -> str:
    """The file name of test category ``index``'s list, e.g. ``test0_normal.txt``."""
    return f"test{index}_{CATEGORIES[index]}.txt"


def generate_culane(
    dst: Path,
    *,
    seed: int,
    num_drivers: int = 2,
    videos_per_driver: int = 3,
    frames_per_video: int = 50,
    test_fraction: float = 0.3,
    val_fraction: float = 0.1,
) -> None:
    """Write a synthetic CULane of ``num_drivers * videos_per_driver * frames_per_video`` frames under ``dst``.

    Frames are shuffled (by ``seed``) into test (``test_fraction``, at least one per
    category), val (``val_fraction``, at least one) and train (the rest, at least one).
    Refuses a ``dst`` that already holds CULane data (stale frames of an earlier run
    would silently mix in); a run that fails leaves nothing behind.
    """
    if num_drivers < 1 or videos_per_driver < 1 or frames_per_video < 1:
        raise UserError(
            "synthetic CULane needs at least one driver, one video per driver and one frame per video",
            hint="pass positive num_drivers, videos_per_driver and frames_per_video",
        )
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise UserError(
            f"test_fraction {test_fraction} and val_fraction {val_fraction} must be in [0, 1) with a sum below 1"
        )
    frames = [(d, v, i) for d in range(num_drivers) for v in range(videos_per_driver) for i in range(frames_per_video)]
    num_test = max(len(CATEGORIES), round(len(frames) * test_fraction))
    num_val = max(1, round(len(frames) * val_fraction))
    if num_test + num_val >= len(frames):
        raise UserError(
            f"synthetic CULane needs at least {num_test + num_val + 1} frames "
            f"({len(CATEGORIES)} test frames, one per category, one val and one train frame), "
            f"got {len(frames)}",
            hint="raise frames_per_video, videos_per_driver or num_drivers",
        )
    dst = Path(dst)
    if dst.exists() and (any(dst.glob("driver_*")) or (dst / "list").exists()):
        raise UserError(
            f"{dst} already holds CULane data (driver_* or list/)",
            hint="choose another --dst, or remove the old synthetic data first",
        )
    order = np.random.default_rng([seed % 2**64, 7]).permutation(len(frames))
    split_of: dict[int, str] = {}
    for rank, index in enumerate(order):
        split_of[int(index)] = "test" if rank < num_test else "val" if rank < num_test + num_val else "train"
    tmp = dst / f".synth-{uuid.uuid4().hex[:8]}"
    lists: dict[str, list[str]] = {"train_gt": [], "train": [], "val_gt": [], "val": [], "test": []}
    by_category: list[list[str]] = [[] for _ in CATEGORIES]
    test_rank = 0
    try:
        tmp.mkdir(parents=True)
        with console.progress() as bar:
            task = bar.add_task("synth culane", total=len(frames))
            for index, (d, v, i) in enumerate(frames):
                rng = np.random.default_rng([seed % 2**64, d, v, i])
                split = split_of[index]
                if split == "test":
                    kind = test_rank % len(CATEGORIES)  # cycles, so that every category list is populated
                    test_rank += 1
                else:
                    kind = int(rng.choice(len(CATEGORIES), p=_TRAIN_KIND_WEIGHTS / _TRAIN_KIND_WEIGHTS.sum()))
                rel = f"{_driver_name(d)}/{_video_name(d, v)}/{i * FRAME_STRIDE:05d}.jpg"
                img, lanes = render_frame(rng, CATEGORIES[kind])
                _write_frame(tmp / rel, img, lanes)
                lists[split].append(f"/{rel}")
                if split == "test":
                    by_category[kind].append(rel)
                else:
                    flags = " ".join("1" if lane is not None else "0" for lane in lanes)
                    lists[f"{split}_gt"].append(f"/{rel} /laneseg_label_w16/{rel[:-4]}.png {flags}")
                bar.advance(task)
        (tmp / "list" / "test_split").mkdir(parents=True)
        for name, lines in lists.items():
            (tmp / "list" / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
        for k, lines in enumerate(by_category):
            (tmp / "list" / "test_split" / split_list_name(k)).write_text("".join(f"{line}\n" for line in lines))
        for child in sorted(tmp.iterdir()):
            child.rename(dst / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _driver_name(d: int) -> str:
    return f"driver_{100 + 7 * d}_30frame"


def _video_name(d: int, v: int) -> str:
    return f"0525{15 + d:02d}{17 + v % 40:02d}_{(433 + 97 * v) % 10000:04d}.MP4"


def _write_frame(path: Path, img: np.ndarray, lanes: list[np.ndarray | None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a synthetic frame as JPEG")
    path.write_bytes(jpg.tobytes())
    rows = [" ".join(f"{x:.3f} {int(y)}" for x, y in lane) + " " for lane in lanes if lane is not None]
    path.with_name(f"{path.stem}.lines.txt").write_text("".join(f"{row}\n" for row in rows))


# -- the scene -----------------------------------------------------------------------------
@dataclass
class Camera:
    """A pinhole camera over a flat road: ground point (lateral X, depth Z) -> pixel (u, v)."""

    horizon: float
    height: float
    cx: float
    focal: float = _FOCAL

    def project(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.cx + self.focal * x / z, self.horizon + self.focal * self.height / z

    def depth(self, v: np.ndarray) -> np.ndarray:
        """The ground depth seen at image row ``v`` (below the horizon)."""
        return self.focal * self.height / (v - self.horizon)


@dataclass
class Road:
    """The ground curve shared by every lane boundary: ``X(Z) = X0 + a Z + b Z^2``."""

    heading: float
    curvature: float

    def lateral(self, x0: float | np.ndarray, z: np.ndarray) -> np.ndarray:
        return x0 + self.heading * z + self.curvature * z * z


def render_frame(rng: np.random.Generator, kind: str) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """One 1640x590 BGR frame of ``kind`` and its lanes in the four CULane slots (ll, l, r, rr).

    A slot's lane is ``None`` where there is no lane (or it has fewer than two points in
    the image); otherwise an ``(N, 2)`` array of ``x, y`` at rows 590, 580, ... bottom-up.
    """
    if kind not in CATEGORIES:
        raise ValueError(f"unknown CULane category {kind!r}; one of {', '.join(CATEGORIES)}")
    cam = Camera(horizon=rng.uniform(215, 265), height=rng.uniform(1.4, 1.7), cx=WIDTH / 2 + rng.uniform(-40, 40))
    curvature = rng.uniform(0.0022, 0.004) * rng.choice([-1, 1]) if kind == "curve" else rng.uniform(-6e-4, 6e-4)
    road = Road(heading=rng.uniform(-0.03, 0.03), curvature=curvature)
    lane_width = rng.uniform(3.3, 3.9)
    ego = rng.uniform(-0.3, 0.3) * lane_width
    num_lanes = int(rng.choice([2, 3, 4], p=[0.25, 0.35, 0.4]))
    first = {2: 1, 3: int(rng.integers(0, 2)), 4: 0}[num_lanes]
    slots = list(range(first, first + num_lanes))  # of the four: ll, l, r, rr
    x0s = {s: (s - 1.5) * lane_width - ego for s in slots}
    z_far = rng.uniform(45, 80)

    img = _background(rng, cam, road, min(x0s.values()) - 2.5, max(x0s.values()) + 2.5)
    lanes: list[np.ndarray | None] = [None, None, None, None]
    if kind == "cross":
        _draw_crossing(img, rng, cam, road, min(x0s.values()) - 2.5, max(x0s.values()) + 2.5)
    else:
        contrast = rng.uniform(0.12, 0.3) if kind == "noline" else rng.uniform(0.75, 1.0)
        for s in slots:
            outer = s in (slots[0], slots[-1])
            dashed = rng.random() < (0.35 if outer else 0.8)
            yellow = rng.random() < 0.12
            _draw_marking(img, rng, cam, road, x0s[s], z_far, dashed, yellow, contrast)
            lanes[s] = _annotate(cam, road, x0s[s], z_far)
        if kind == "arrow":
            centres = [(x0s[s] + x0s[s + 1]) / 2 for s in slots[:-1]]
            for xc in rng.choice(centres, size=min(len(centres), int(rng.integers(1, 3))), replace=False):
                _draw_arrow(img, cam, road, float(xc), rng.uniform(9, 22))
    centres = [(x0s[s] + x0s[s + 1]) / 2 for s in slots[:-1]] or [0.0]
    num_cars = int(rng.integers(4, 9)) if kind == "crowd" else int(rng.integers(0, 3))
    _draw_cars(img, rng, cam, road, centres, num_cars, near=kind == "crowd")
    if kind == "shadow" or rng.random() < 0.1:
        _draw_shadows(img, rng, int(rng.integers(2, 5)) if kind == "shadow" else 1, cam)
    if kind == "night":
        img = _night(img, rng, cam, strength=rng.uniform(0.2, 0.32))
    elif kind == "hlight":
        img = _night(img, rng, cam, strength=rng.uniform(0.4, 0.55))
        img = _glare(img, rng, cam, int(rng.integers(1, 4)))
    noise = cv2.resize(rng.normal(0, 4, (HEIGHT // 4, WIDTH // 4)).astype(np.float32), (WIDTH, HEIGHT))
    img = np.clip(img.astype(np.float32) + noise[:, :, None], 0, 255).astype(np.uint8)
    return img, lanes


def _annotate(cam: Camera, road: Road, x0: float, z_far: float) -> np.ndarray | None:
    """The lane at rows 590, 580, ... up to its far end: the longest run of points inside the image."""
    top = cam.horizon + cam.focal * cam.height / z_far
    ys = np.arange(HEIGHT, top, -ROW_STEP, dtype=np.float64)
    if len(ys) < 2:
        return None
    xs = cam.cx + (ys - cam.horizon) / cam.height * road.lateral(x0, cam.depth(ys))
    inside = (xs >= 0) & (xs < WIDTH)
    best, start = (0, 0), None
    for k, ok in enumerate(np.append(inside, False)):
        if ok and start is None:
            start = k
        elif not ok and start is not None:
            best = max(best, (start, k), key=lambda r: r[1] - r[0])
            start = None
    if best[1] - best[0] < 2:
        return None
    xs = np.round(xs[best[0] : best[1]], 3)  # as written to the .lines.txt
    return np.stack([xs, ys[best[0] : best[1]]], axis=1)


def _fill(img: np.ndarray, polygons: list[np.ndarray], color: tuple[float, ...]) -> None:
    if polygons:
        pts = [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in polygons]
        cv2.fillPoly(img, pts, color, lineType=cv2.LINE_AA, shift=_SHIFT)


def _strip(cam: Camera, road: Road, x0: float, half_width: float, z: np.ndarray) -> list[np.ndarray]:
    """Quads of a painted strip of ``half_width`` metres around the curve, between consecutive depths."""
    ul, v = cam.project(road.lateral(x0 - half_width, z), z)
    ur, _ = cam.project(road.lateral(x0 + half_width, z), z)
    return [
        np.array([[ul[k], v[k]], [ur[k], v[k]], [ur[k + 1], v[k + 1]], [ul[k + 1], v[k + 1]]])
        for k in range(len(z) - 1)
    ]


def _background(rng: np.random.Generator, cam: Camera, road: Road, x_left: float, x_right: float) -> np.ndarray:
    """Sky, roadside scenery and verges, and the road surface between ``x_left`` and ``x_right``."""
    img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
    h = int(cam.horizon)
    sky_top, sky_bottom = rng.uniform(150, 230, 3), rng.uniform(170, 250, 3)
    t = np.linspace(0, 1, max(h, 1))[:, None]
    img[:h] = (sky_top * (1 - t) + sky_bottom * t).astype(np.uint8)[:, None, :]
    verge = rng.uniform([30, 70, 50], [80, 130, 100])
    img[h:] = verge.astype(np.uint8)
    for _ in range(int(rng.integers(6, 14))):  # buildings and trees on the horizon
        x = rng.uniform(-100, WIDTH)
        w, top = rng.uniform(60, 260), cam.horizon - rng.uniform(20, 160)
        cv2.rectangle(img, (int(x), int(top)), (int(x + w), h + 2), rng.uniform(30, 160, 3).tolist(), -1)
    z = np.geomspace(2.0, 400.0, 120)
    gray = rng.uniform(70, 125)
    tint = gray + rng.uniform(-6, 6, 3)
    surface = _strip(cam, road, (x_left + x_right) / 2, (x_right - x_left) / 2, z)
    _fill(img, surface, tuple(tint.tolist()))
    return img


def _draw_marking(
    img: np.ndarray,
    rng: np.random.Generator,
    cam: Camera,
    road: Road,
    x0: float,
    z_far: float,
    dashed: bool,
    yellow: bool,
    contrast: float,
) -> None:
    """One painted boundary, 0.15 m wide, solid or dashed (dashes 3-6 m every 9-15 m)."""
    z_near = cam.depth(np.array([HEIGHT + 40.0]))[0]
    z = np.geomspace(z_near, z_far, 160)
    quads = _strip(cam, road, x0, rng.uniform(0.06, 0.09), z)
    if dashed:
        period, dash, phase = rng.uniform(9, 15), rng.uniform(3, 6), rng.uniform(0, 15)
        mid = (z[:-1] + z[1:]) / 2
        quads = [q for q, m in zip(quads, mid, strict=True) if (m + phase) % period < dash]
    paint = np.array([60, 200, 230] if yellow else [235, 235, 235], np.float64) + rng.uniform(-15, 10, 3)
    overlay = img.copy()
    _fill(overlay, quads, tuple(paint.tolist()))
    cv2.addWeighted(overlay, contrast, img, 1 - contrast, 0, dst=img)


def _draw_arrow(img: np.ndarray, cam: Camera, road: Road, xc: float, z0: float) -> None:
    """A straight-ahead arrow painted in a lane, from depth ``z0`` to ``z0 + 5`` m."""
    shift = road.lateral(0.0, np.array([z0 + 2.5]))[0]
    ground = [
        [(-0.15, 0), (0.15, 0), (0.15, 3.2), (-0.15, 3.2)],  # shaft
        [(-0.5, 3.2), (0.5, 3.2), (0.0, 5.0)],  # head
    ]
    polys = []
    for shape in ground:
        xs = np.array([xc + shift + p[0] for p in shape])
        zs = np.array([z0 + p[1] for p in shape])
        u, v = cam.project(xs, zs)
        polys.append(np.stack([u, v], axis=1))
    _fill(img, polys, (225, 225, 225))


def _draw_crossing(
    img: np.ndarray, rng: np.random.Generator, cam: Camera, road: Road, x_left: float, x_right: float
) -> None:
    """A crossroad: the crossing road's surface, a stop line and a zebra crossing, no lane boundaries."""
    z0 = rng.uniform(9, 16)
    gray = float(rng.uniform(80, 120))
    band = _strip(cam, road, 0.0, 60.0, np.array([z0 + 4, z0 + 16]))
    _fill(img, band, (gray, gray, gray))
    stop = _strip(cam, road, (x_left + x_right) / 2, (x_right - x_left) / 2 - 1, np.array([z0, z0 + 0.4]))
    _fill(img, stop, (230, 230, 230))
    stripes = []
    for x in np.arange(x_left + 1, x_right - 1, 1.1):
        stripes += _strip(cam, road, float(x), 0.25, np.array([z0 + 1.0, z0 + 4.0]))
    _fill(img, stripes, (225, 225, 225))


def _draw_cars(
    img: np.ndarray,
    rng: np.random.Generator,
    cam: Camera,
    road: Road,
    centres: list[float],
    count: int,
    near: bool,
) -> None:
    """Cars (body, rear window, tail lights, shadow) in the lanes, far to near, so nearer ones occlude."""
    depths = np.sort(rng.uniform(8 if near else 12, 45 if near else 70, count))[::-1]
    for z in depths:
        xc = float(rng.choice(centres)) + rng.uniform(-0.4, 0.4)
        x = road.lateral(xc, np.array([z]))[0]
        u, v = cam.project(np.array([x]), np.array([z]))
        scale = cam.focal / z
        w, h = 1.8 * scale, rng.uniform(1.3, 1.7) * scale
        x1, x2, y2 = u[0] - w / 2, u[0] + w / 2, v[0]
        y1 = y2 - h
        cv2.ellipse(img, (int(u[0]), int(y2)), (int(w * 0.6), max(1, int(h * 0.08))), 0, 0, 360, (20, 20, 20), -1)
        body = rng.uniform(20, 220, 3).tolist()
        cv2.rectangle(img, (int(x1), int(y1)), (int(x2), int(y2 - 0.05 * h)), body, -1)
        cv2.rectangle(
            img, (int(x1 + 0.15 * w), int(y1 + 0.08 * h)), (int(x2 - 0.15 * w), int(y1 + 0.4 * h)), (40, 35, 30), -1
        )
        for lx in (x1 + 0.08 * w, x2 - 0.2 * w):
            cv2.rectangle(
                img, (int(lx), int(y1 + 0.5 * h)), (int(lx + 0.12 * w), int(y1 + 0.62 * h)), (30, 30, 200), -1
            )


def _draw_shadows(img: np.ndarray, rng: np.random.Generator, count: int, cam: Camera) -> None:
    """Dark quadrilaterals across the road (trees, buildings, bridges)."""
    mask = np.zeros(img.shape[:2], np.uint8)
    for _ in range(count):
        y1 = rng.uniform(cam.horizon + 20, HEIGHT - 60)
        y2 = min(HEIGHT + 40.0, y1 + rng.uniform(40, 220))
        xa, xb = rng.uniform(-200, WIDTH * 0.6), rng.uniform(WIDTH * 0.4, WIDTH + 200)
        skew = rng.uniform(-200, 200)
        quad = np.array([[xa, y1], [xb, y1], [xb + skew, y2], [xa + skew, y2]])
        _fill(mask, [quad], (255,))
    mask = cv2.GaussianBlur(mask, (0, 0), 6)
    darkness = rng.uniform(0.35, 0.55)
    factor = 1.0 - (1.0 - darkness) * mask.astype(np.float32)[:, :, None] / 255.0
    img[:] = np.clip(img * factor, 0, 255).astype(np.uint8)


def _night(img: np.ndarray, rng: np.random.Generator, cam: Camera, strength: float) -> np.ndarray:
    """Dim the frame to ``strength`` of its light, bluish, with the car's headlights lighting the road ahead."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    cone = np.exp(-(((xs - cam.cx) / 500.0) ** 2)) * np.clip((ys - cam.horizon) / (HEIGHT - cam.horizon), 0, 1)
    gain = strength + 0.55 * cone * rng.uniform(0.7, 1.0)
    out = img.astype(np.float32) * gain[:, :, None] * np.array([1.1, 0.95, 0.9], np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def _glare(img: np.ndarray, rng: np.random.Generator, cam: Camera, count: int) -> np.ndarray:
    """Oncoming headlights: bright blobs with a wide halo near the horizon."""
    glow = np.zeros(img.shape[:2], np.float32)
    for _ in range(count):
        cx, cy = rng.uniform(200, WIDTH - 200), cam.horizon + rng.uniform(10, 90)
        cv2.circle(glow, (int(cx), int(cy)), int(rng.uniform(10, 25)), 1.0, -1)
    sigma = rng.uniform(30, 60)
    halo = cv2.GaussianBlur(glow, (0, 0), sigma) * (2 * math.pi * sigma * 0.25)
    glow = np.maximum(glow, np.clip(halo, 0, 1))
    out = img.astype(np.float32) + 255.0 * glow[:, :, None] * rng.uniform(0.7, 1.0)
    return np.clip(out, 0, 255).astype(np.uint8)
