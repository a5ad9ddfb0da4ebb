"""Synthetic nuScenes: a dataroot the devkit loads unchanged, with images a small model can learn from.

The real dataset cannot be downloaded here, so this writes the real raw layout::

    <dst>/<version>/{attribute,calibrated_sensor,category,ego_pose,instance,log,map,sample,
                     sample_annotation,sample_data,scene,sensor,visibility}.json
    <dst>/samples/CAM_*/<logfile>__<CAM>__<timestamp>.jpg      six per sample
    <dst>/samples/LIDAR_TOP/<logfile>__LIDAR_TOP__<timestamp>.pcd.bin   (empty: no points)
    <dst>/maps/<token>.png

Scenes carry the real split names (the ten mini scenes, or for ``v1.0-trainval`` the
first eight train and two val scenes of the devkit's lists), so the devkit's own split
logic applies. Each scene is a short drive: key frames at 2 Hz, the ego on a smooth
arc, and ``objects_per_sample`` objects (every one of the ten detection classes at least
once, then a car-heavy mix) under their real category names and realistic sizes, parked
or moving at a constant velocity, annotated in every key frame of the scene (so
prev/next chains exist and the devkit's ``box_velocity`` is exact). Objects stay within
the class's evaluation range (cones and barriers 25 m, pedestrians and cycles 35 m,
vehicles 40 m) and never overlap each other or the ego.

Images: the boxes drawn as shaded cuboids through the real rig's geometry — six level
cameras at about 1.5 m looking front, front-left/right (+-55 deg), back-left/right
(+-110 deg) and back, with the real focal lengths scaled from 1600x900 to
``image_width`` (default 480x270: the full size costs a CPU far more and teaches a tiny
model nothing more). Visible faces are filled far to near (painter's order), each class
in its own colour and each face in its own shade (top brightest, front, left, right,
back darkest), so that class, depth, size and heading are all visible.

Each camera has its own ego pose, a few milliseconds off the lidar's as on the real car;
a box is drawn where the camera's pose puts its annotation, so ``boxes_to_camera`` with
the camera's ``ego2global`` lands exactly on the drawing. Annotations are made at the
lidar's (the sample's) timestamp. ``visibility`` is "4" (80-100 %) for every box and
``num_lidar_pts`` a plausible count that falls with distance (at least 1). Tokens are
hashes of the seed and the record, so a seed always writes the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hat import console
from hat.errors import UserError
from hat.nuscenes.constants import ATTRIBUTES, CAMERAS, CATEGORY_OF_CLASS, DETECTION_CLASSES, LIDAR
from hat.nuscenes.devkit import require_devkit
from hat.nuscenes.geometry import (
    box_corners,
    boxes_to_camera,
    matrix_to_quaternion,
    transform_matrix,
    yaw_to_quaternion,
)

MINI_TRAIN = (
    "scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077", "scene-1094", "scene-1100",
)  # fmt: skip
MINI_VAL = ("scene-0103", "scene-0916")
VERSIONS = ("v1.0-mini", "v1.0-trainval")
#: Where each mini scene was driven (the real locations); other scenes cycle through them.
_LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown", "singapore-hollandvillage")
_MINI_LOCATION = {
    "scene-0061": 0, "scene-0553": 1, "scene-0655": 1, "scene-0757": 1, "scene-0796": 2,
    "scene-1077": 3, "scene-1094": 3, "scene-1100": 3, "scene-0103": 1, "scene-0916": 2,
}  # fmt: skip

#: Full-resolution image size of the real cameras; intrinsics below are for it.
FULL_WIDTH, FULL_HEIGHT = 1600, 900


@dataclass(frozen=True)
class _CameraSpec:
    yaw_deg: float  # heading of the optical axis in the ego frame (0 = forward, + = left)
    translation: tuple[float, float, float]  # on the ego, metres (x forward, y left, z up)
    focal: float  # pixels at 1600x900
    principal: tuple[float, float]
    time_offset_us: int  # trigger time relative to the lidar key frame


#: The real rig's layout (rounded): positions and focal lengths of nuScenes' calibrated sensors.
RIG: dict[str, _CameraSpec] = {
    "CAM_FRONT": _CameraSpec(0.0, (1.70, 0.016, 1.51), 1266.4, (816.3, 491.5), 12_500),
    "CAM_FRONT_RIGHT": _CameraSpec(-55.0, (1.55, -0.493, 1.50), 1260.8, (808.0, 495.3), 20_000),
    "CAM_FRONT_LEFT": _CameraSpec(55.0, (1.52, 0.495, 1.51), 1272.6, (826.6, 479.8), 4_500),
    "CAM_BACK": _CameraSpec(180.0, (0.028, 0.003, 1.58), 809.2, (829.2, 481.8), 37_500),
    "CAM_BACK_LEFT": _CameraSpec(110.0, (1.04, 0.485, 1.59), 1256.7, (792.1, 492.8), 45_000),
    "CAM_BACK_RIGHT": _CameraSpec(-110.0, (1.01, -0.481, 1.56), 1259.5, (807.3, 501.2), 29_500),
}
_LIDAR_TRANSLATION = (0.985, 0.0, 1.84)
_LIDAR_YAW = -math.pi / 2

#: Mean nuScenes box size (w, l, h) and how far from the ego objects of the class are placed.
_CLASS_SIZE: dict[str, tuple[float, float, float]] = {
    "car": (1.95, 4.62, 1.73),
    "truck": (2.52, 6.94, 2.84),
    "bus": (2.94, 11.19, 3.47),
    "trailer": (2.92, 12.28, 3.87),
    "construction_vehicle": (2.82, 6.56, 3.20),
    "pedestrian": (0.67, 0.73, 1.77),
    "motorcycle": (0.77, 2.11, 1.47),
    "bicycle": (0.61, 1.70, 1.29),
    "traffic_cone": (0.41, 0.41, 1.07),
    "barrier": (2.53, 0.50, 0.98),
}
_CLASS_RANGE = {c: 40.0 for c in ("car", "truck", "bus", "trailer", "construction_vehicle")}
_CLASS_RANGE.update({"pedestrian": 35.0, "motorcycle": 35.0, "bicycle": 35.0, "traffic_cone": 25.0, "barrier": 25.0})
#: Class mix of the objects beyond the first ten (one of each class).
_CLASS_WEIGHTS = {
    "car": 0.34, "truck": 0.07, "bus": 0.03, "trailer": 0.03, "construction_vehicle": 0.03,
    "pedestrian": 0.2, "motorcycle": 0.04, "bicycle": 0.04, "traffic_cone": 0.1, "barrier": 0.12,
}  # fmt: skip
_VEHICLES = ("car", "truck", "bus", "trailer", "construction_vehicle")
_CYCLES = ("motorcycle", "bicycle")

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
_KEYFRAME_US = 500_000  # 2 Hz key frames
_CATEGORIES = (
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
    "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
)  # fmt: skip
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def generate_nuscenes(
    dst: Path,
    *,
    seed: int,
    version: str = "v1.0-mini",
    samples_per_scene: int = 8,
    objects_per_sample: int = 16,
    image_width: int = 480,
) -> None:
    """Write a synthetic nuScenes ``version`` dataroot under ``dst`` (ten scenes).

    ``image_width`` sets the camera resolution (height keeps nuScenes' 16:9). Refuses a
    ``dst`` that already holds tables or samples; a failed run leaves nothing behind.
    """
    require_devkit("`hat synth nuscenes`")
    if version not in VERSIONS:
        raise UserError(f"cannot synthesize nuScenes version {version!r}", hint=f"use one of {', '.join(VERSIONS)}")
    if samples_per_scene < 2:
        raise UserError("samples_per_scene must be at least 2 (velocities need a previous or next key frame)")
    if objects_per_sample < len(DETECTION_CLASSES):
        raise UserError(
            f"objects_per_sample must be at least {len(DETECTION_CLASSES)} (one object of every detection class)"
        )
    if not 64 <= image_width <= FULL_WIDTH:
        raise UserError(f"image_width {image_width} is out of range", hint=f"use 64..{FULL_WIDTH}")
    dst = Path(dst)
    for name in (version, "samples", "maps"):
        if (dst / name).exists() and any((dst / name).iterdir()):
            raise UserError(
                f"{dst / name} already exists and is not empty",
                hint="choose another --dst, or remove the old synthetic data first",
            )
    scenes = _scene_names(version)
    writer = _Writer(seed, version, image_width)
    tmp = dst / f".synth-{uuid.uuid4().hex[:8]}"
    try:
        with console.progress() as bar:
            task = bar.add_task("synth nuscenes", total=len(scenes) * samples_per_scene)
            for index, name in enumerate(scenes):
                rng = np.random.default_rng([seed % 2**63, index])
                writer.scene(tmp, index, name, rng, samples_per_scene, objects_per_sample, lambda: bar.advance(task))
        writer.write_tables(tmp / version)
        for name in (version, "samples", "maps"):
            if (dst / name).exists():
                (dst / name).rmdir()  # empty, checked above
            (tmp / name).rename(dst / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _scene_names(version: str) -> list[str]:
    if version == "v1.0-mini":
        return [*MINI_TRAIN, *MINI_VAL]
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    return [*splits["train"][:8], *splits["val"][:2]]


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


# -- the world of one scene ----------------------------------------------------------------


@dataclass
class _Ego:
    origin: np.ndarray  # (2,) global xy at t = 0
    heading: float
    speed: float
    yaw_rate: float

    def pose(self, t: float) -> tuple[np.ndarray, float]:
        """Global xy and heading at ``t`` seconds after the scene's first key frame (an arc)."""
        h = self.heading + self.yaw_rate * t
        if abs(self.yaw_rate) < 1e-9:
            xy = self.origin + self.speed * t * np.array([math.cos(self.heading), math.sin(self.heading)])
        else:
            r = self.speed / self.yaw_rate
            arc = [math.sin(h) - math.sin(self.heading), math.cos(self.heading) - math.cos(h)]
            xy = self.origin + r * np.array(arc)
        return xy, h

    def matrix(self, t: float) -> np.ndarray:
        xy, h = self.pose(t)
        return transform_matrix(yaw_to_quaternion(h), [xy[0], xy[1], 0.0])


@dataclass
class _Object:
    cls: str
    size: np.ndarray  # w, l, h
    start: np.ndarray  # (2,) global xy at t = 0
    velocity: np.ndarray  # (2,) global m/s
    yaw: float
    attribute: str | None
    shade: float  # per-instance brightness

    def xy(self, t: float) -> np.ndarray:
        return self.start + self.velocity * t

    @property
    def radius(self) -> float:
        return 0.5 * math.hypot(self.size[0], self.size[1])


def _motion(cls: str, rng: np.random.Generator) -> tuple[float, str | None]:
    """Speed (m/s) and attribute of a new object of ``cls``."""
    if cls in _VEHICLES:
        if rng.random() < 0.5:
            return rng.uniform(2.0, 8.0), "vehicle.moving"
        return 0.0, "vehicle.parked" if rng.random() < 0.7 else "vehicle.stopped"
    if cls == "pedestrian":
        if rng.random() < 0.6:
            return rng.uniform(0.8, 1.8), "pedestrian.moving"
        return 0.0, "pedestrian.standing" if rng.random() < 0.8 else "pedestrian.sitting_lying_down"
    if cls in _CYCLES:
        if rng.random() < 0.5:
            return rng.uniform(2.0, 6.0), "cycle.with_rider"
        return 0.0, "cycle.without_rider" if rng.random() < 0.7 else "cycle.with_rider"
    return 0.0, None  # cones and barriers: static, no attribute


def _place_objects(ego: _Ego, times: np.ndarray, count: int, rng: np.random.Generator) -> list[_Object]:
    """``count`` objects, one of each class first, none overlapping another or the ego at any key frame."""
    weights = np.array([_CLASS_WEIGHTS[c] for c in DETECTION_CLASSES])
    extra = rng.choice(len(DETECTION_CLASSES), size=count - len(DETECTION_CLASSES), p=weights / weights.sum())
    classes = [*DETECTION_CLASSES, *(DETECTION_CLASSES[i] for i in extra)]
    classes.sort(key=lambda c: -_CLASS_SIZE[c][1])  # the long ones first, while there is room
    ego_xy = np.array([ego.pose(t)[0] for t in times])  # (T, 2)
    placed: list[_Object] = []
    for cls in classes:
        size = np.array(_CLASS_SIZE[cls]) * rng.uniform(0.9, 1.1, size=3)
        speed, attribute = _motion(cls, rng)
        for attempt in range(200):
            if attempt == 100 and speed > 0:  # a moving object that never fits stands still instead
                speed, attribute = 0.0, {"pedestrian": "pedestrian.standing"}.get(cls, attribute)
                if cls in _VEHICLES:
                    attribute = "vehicle.parked"
                elif cls in _CYCLES:
                    attribute = "cycle.without_rider"
            yaw = rng.uniform(-math.pi, math.pi)
            dist = rng.uniform(4.0, _CLASS_RANGE[cls])
            angle = rng.uniform(-math.pi, math.pi)
            start = ego_xy[0] + dist * np.array([math.cos(angle), math.sin(angle)])
            velocity = speed * np.array([math.cos(yaw), math.sin(yaw)])
            obj = _Object(cls, size, start, velocity, yaw, attribute, rng.uniform(0.85, 1.1))
            if _fits(obj, placed, ego_xy, times):
                placed.append(obj)
                break
    return placed


def _fits(obj: _Object, placed: list[_Object], ego_xy: np.ndarray, times: np.ndarray) -> bool:
    track = obj.start + times[:, None] * obj.velocity  # (T, 2)
    to_ego = np.linalg.norm(track - ego_xy, axis=1)
    if to_ego.min() < obj.radius + 3.5 or to_ego.max() > _CLASS_RANGE[obj.cls]:
        return False
    for other in placed:
        other_track = other.start + times[:, None] * other.velocity
        if np.linalg.norm(track - other_track, axis=1).min() < obj.radius + other.radius + 0.5:
            return False
    return True


# -- writing ------------------------------------------------------------------------------


class _Writer:
    """Accumulates the 13 tables while scenes are drawn; writes images as it goes."""

    def __init__(self, seed: int, version: str, image_width: int) -> None:
        self.seed = seed
        self.version = version
        self.width = image_width
        self.height = image_height(image_width)
        self.tables: dict[str, list[dict]] = {
            name: []
            for name in (
                "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
                "sample_annotation", "sample_data", "scene", "sensor", "visibility",
            )
        }  # fmt: skip
        self.tables["category"] = [
            {"token": self.token("category", n), "name": n, "description": f"nuScenes category {n}"}
            for n in _CATEGORIES
        ]
        self.category_token = {r["name"]: r["token"] for r in self.tables["category"]}
        self.tables["attribute"] = [
            {"token": self.token("attribute", n), "name": n, "description": f"nuScenes attribute {n}"}
            for n in ATTRIBUTES
        ]
        self.attribute_token = {r["name"]: r["token"] for r in self.tables["attribute"]}
        self.tables["visibility"] = [
            {"token": t, "level": level, "description": f"visibility of the annotation is between {level[1:]} %"}
            for t, level in _VISIBILITY
        ]
        self.tables["sensor"] = [
            {"token": self.token("sensor", ch), "channel": ch, "modality": "camera" if ch != LIDAR else "lidar"}
            for ch in (*CAMERAS, LIDAR)
        ]
        self.sensor_token = {r["channel"]: r["token"] for r in self.tables["sensor"]}
        self.maps: dict[str, dict] = {}
        self.intrinsic = {ch: camera_intrinsic(ch, image_width) for ch in CAMERAS}
        self.sensor2ego = {ch: camera_sensor2ego(ch) for ch in CAMERAS}
        self.sensor2ego[LIDAR] = transform_matrix(yaw_to_quaternion(_LIDAR_YAW), _LIDAR_TRANSLATION)
        self.background = {ch: background_image(self.intrinsic[ch], self.width, self.height) for ch in CAMERAS}

    def token(self, *parts: object) -> str:
        key = ":".join(str(p) for p in (self.seed, self.version, *parts))
        return hashlib.md5(key.encode()).hexdigest()

    def scene(
        self, root: Path, index: int, name: str, rng: np.random.Generator, num_samples: int, num_objects: int, tick
    ) -> None:
        location = _LOCATIONS[_MINI_LOCATION.get(name, index % len(_LOCATIONS))]
        start_us = 1_531_000_000_000_000 + index * 3_600_000_000 + int(rng.integers(0, 10**6))
        date = f"2018-07-{8 + index % 20:02d}"
        logfile = f"n015-{date}-11-{index % 60:02d}-00+0800"
        log_token = self.token("log", name)
        self.tables["log"].append(
            {"token": log_token, "logfile": logfile, "vehicle": "n015", "date_captured": date, "location": location}
        )
        self._map(root, location, log_token)
        scene_token = self.token("scene", name)
        calib = {}
        for ch in (*CAMERAS, LIDAR):
            calib[ch] = self.token("calibrated_sensor", name, ch)
            matrix = self.sensor2ego[ch]
            self.tables["calibrated_sensor"].append(
                {
                    "token": calib[ch],
                    "sensor_token": self.sensor_token[ch],
                    "translation": matrix[:3, 3].tolist(),
                    "rotation": matrix_to_quaternion(matrix[:3, :3]).tolist(),
                    "camera_intrinsic": self.intrinsic[ch].tolist() if ch != LIDAR else [],
                }
            )

        ego = _Ego(
            origin=np.array([rng.uniform(300, 1500), rng.uniform(600, 1800)]),
            heading=rng.uniform(-math.pi, math.pi),
            speed=rng.uniform(0.0, 8.0),
            yaw_rate=rng.uniform(-0.08, 0.08),
        )
        times = np.arange(num_samples) * (_KEYFRAME_US / 1e6)
        objects = _place_objects(ego, times, num_objects, rng)
        instance_tokens = [self.token("instance", name, i) for i in range(len(objects))]
        sample_tokens = [self.token("sample", name, k) for k in range(num_samples)]
        ann_tokens = [[self.token("annotation", name, k, i) for i in range(len(objects))] for k in range(num_samples)]
        sd_tokens = {
            ch: [self.token("sample_data", name, ch, k) for k in range(num_samples)] for ch in (*CAMERAS, LIDAR)
        }
        for i, obj in enumerate(objects):
            self.tables["instance"].append(
                {
                    "token": instance_tokens[i],
                    "category_token": self.category_token[CATEGORY_OF_CLASS[obj.cls]],
                    "nbr_annotations": num_samples,
                    "first_annotation_token": ann_tokens[0][i],
                    "last_annotation_token": ann_tokens[-1][i],
                }
            )
        self.tables["scene"].append(
            {
                "token": scene_token,
                "log_token": log_token,
                "nbr_samples": num_samples,
                "first_sample_token": sample_tokens[0],
                "last_sample_token": sample_tokens[-1],
                "name": name,
                "description": f"synthetic drive in {location}, {len(objects)} objects",
            }
        )

        def link(tokens: list[str], k: int) -> tuple[str, str]:
            return (tokens[k - 1] if k > 0 else "", tokens[k + 1] if k + 1 < len(tokens) else "")

        for k in range(num_samples):
            t_us = start_us + k * _KEYFRAME_US
            prev, nxt = link(sample_tokens, k)
            self.tables["sample"].append(
                {"token": sample_tokens[k], "timestamp": t_us, "prev": prev, "next": nxt, "scene_token": scene_token}
            )
            boxes = self._annotate(objects, times[k], ego, k, sample_tokens[k], instance_tokens, ann_tokens)
            for ch in (LIDAR, *CAMERAS):
                offset = 0 if ch == LIDAR else RIG[ch].time_offset_us
                ts = t_us + offset
                ego2global = ego.matrix(times[k] + offset / 1e6)
                pose_token = self.token("ego_pose", name, ch, k)
                self.tables["ego_pose"].append(
                    {
                        "token": pose_token,
                        "timestamp": ts,
                        "rotation": matrix_to_quaternion(ego2global[:3, :3]).tolist(),
                        "translation": ego2global[:3, 3].tolist(),
                    }
                )
                if ch == LIDAR:
                    filename = f"samples/{ch}/{logfile}__{ch}__{ts}.pcd.bin"
                    (root / filename).parent.mkdir(parents=True, exist_ok=True)
                    (root / filename).write_bytes(b"")
                else:
                    filename = f"samples/{ch}/{logfile}__{ch}__{ts}.jpg"
                    image = self.render(ch, boxes, objects, ego2global)
                    ok, jpg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
                    if not ok:
                        raise RuntimeError("OpenCV failed to encode a synthetic camera image as JPEG")
                    (root / filename).parent.mkdir(parents=True, exist_ok=True)
                    (root / filename).write_bytes(jpg.tobytes())
                prev, nxt = link(sd_tokens[ch], k)
                self.tables["sample_data"].append(
                    {
                        "token": sd_tokens[ch][k],
                        "sample_token": sample_tokens[k],
                        "ego_pose_token": pose_token,
                        "calibrated_sensor_token": calib[ch],
                        "timestamp": ts,
                        "fileformat": "pcd" if ch == LIDAR else "jpg",
                        "is_key_frame": True,
                        "height": 0 if ch == LIDAR else self.height,
                        "width": 0 if ch == LIDAR else self.width,
                        "filename": filename,
                        "prev": prev,
                        "next": nxt,
                    }
                )
            tick()

    def _annotate(
        self,
        objects: list[_Object],
        t: float,
        ego: _Ego,
        k: int,
        sample_token: str,
        instance_tokens: list[str],
        ann_tokens: list[list[str]],
    ) -> dict[str, np.ndarray]:
        """Write the sample's annotations; return them as a packed-style ``boxes`` map for drawing."""
        ego_xy, _ = ego.pose(t)
        centers, sizes, rotations = [], [], []
        for i, obj in enumerate(objects):
            xy = obj.xy(t)
            center = [float(xy[0]), float(xy[1]), float(obj.size[2] / 2)]
            rotation = yaw_to_quaternion(obj.yaw)
            dist = max(float(np.linalg.norm(xy - ego_xy)), 1.0)
            prev = ann_tokens[k - 1][i] if k > 0 else ""
            nxt = ann_tokens[k + 1][i] if k + 1 < len(ann_tokens) else ""
            self.tables["sample_annotation"].append(
                {
                    "token": ann_tokens[k][i],
                    "sample_token": sample_token,
                    "instance_token": instance_tokens[i],
                    "visibility_token": "4",
                    "attribute_tokens": [self.attribute_token[obj.attribute]] if obj.attribute else [],
                    "translation": center,
                    "size": obj.size.tolist(),
                    "rotation": rotation.tolist(),
                    "prev": prev,
                    "next": nxt,
                    "num_lidar_pts": max(1, int(3000 * obj.size[1] * obj.size[2] / dist**2)),
                    "num_radar_pts": 0,
                }
            )
            centers.append(center)
            sizes.append(obj.size)
            rotations.append(rotation)
        n = len(objects)
        return {
            "center": np.array(centers).reshape(n, 3),
            "size": np.array(sizes).reshape(n, 3),
            "rotation": np.array(rotations).reshape(n, 4),
            "velocity": np.zeros((n, 2)),
        }

    def _map(self, root: Path, location: str, log_token: str) -> None:
        if location not in self.maps:
            token = self.token("map", location)
            filename = f"maps/{token}.png"
            (root / "maps").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / filename), np.zeros((20, 20), np.uint8))
            record = {"token": token, "log_tokens": [], "category": "semantic_prior", "filename": filename}
            self.maps[location] = record
            self.tables["map"].append(record)
        self.maps[location]["log_tokens"].append(log_token)

    def render(self, channel: str, boxes: dict, objects: list[_Object], ego2global: np.ndarray) -> np.ndarray:
        """One camera image: the background, then every box's visible faces far to near."""
        image = self.background[channel].copy()
        cam = boxes_to_camera(boxes, ego2global, self.sensor2ego[channel])
        corners = box_corners(cam["center"], cam["size"], cam["yaw"])  # (N, 8, 3)
        intrinsic = self.intrinsic[channel]
        order = np.argsort(-np.linalg.norm(cam["center"], axis=1))
        for i in order:
            box = corners[i]
            if box[:, 2].max() <= _NEAR:
                continue
            if box[:, 2].min() > _NEAR:  # wholly in front: skip it if it projects beside the image
                uv = box[:, :2] / box[:, 2:3] * intrinsic[[0, 1], [0, 1]] + intrinsic[:2, 2]
                if (uv.max(axis=0) < 0).any() or uv[:, 0].min() > self.width or uv[:, 1].min() > self.height:
                    continue
            colour = np.array(_CLASS_COLOUR[objects[i].cls], dtype=np.float64) * objects[i].shade
            centre = box.mean(axis=0)
            for face, shade in _FACES:
                points = box[list(face)]
                face_centre = points.sum(axis=0) / 4.0
                if np.dot(face_centre - centre, face_centre) >= 0:  # faces away from the camera
                    continue
                polygon = _clip_near(points)
                if len(polygon) < 3:
                    continue
                uvw = polygon @ intrinsic.T
                pixels = np.round(uvw[:, :2] / uvw[:, 2:3] * (1 << _SHIFT)).astype(np.int32)
                if np.abs(pixels).max() > 2**26:  # far outside the image: cv2 cannot take it
                    pixels = np.clip(pixels, -(2**26), 2**26)
                fill = tuple(int(v) for v in np.clip(colour * shade, 0, 255))
                cv2.fillConvexPoly(image, pixels, fill, lineType=cv2.LINE_AA, shift=_SHIFT)
                edge = tuple(int(v) for v in np.clip(colour * shade * 0.45, 0, 255))
                cv2.polylines(image, [pixels], True, edge, 1, lineType=cv2.LINE_AA, shift=_SHIFT)
        return image

    def write_tables(self, table_dir: Path) -> None:
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(records, indent=0))


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
