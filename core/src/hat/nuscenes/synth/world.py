"""The world of one synthetic scene: which scenes exist, where the ego drives, what stands around it.

Kept apart from drawing and from the nuScenes tables so that the simulation (every draw
from the scene's random generator, in a fixed order) can be read and changed on its own.
Each scene is a short drive: key frames at 2 Hz, the ego on a smooth arc, and
``num_objects`` objects (every one of the ten detection classes at least once, then a
car-heavy mix) under realistic sizes, parked or moving at a constant velocity. Objects
stay within the class's evaluation range (cones and barriers 25 m, pedestrians and cycles
35 m, vehicles 40 m) and never overlap each other or the ego at any key frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hat.nuscenes.constants import DETECTION_CLASSES
from hat.nuscenes.geometry import transform_matrix, yaw_to_quaternion

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
KEYFRAME_US = 500_000  # 2 Hz key frames

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
_PLACEMENT_ATTEMPTS = 200
_STAND_STILL_AFTER = 100  # attempts: a moving object that never fits stands still instead


def scene_names(version: str) -> list[str]:
    """The ten scenes of ``version``: the mini ones, or the first eight train and two val scenes."""
    if version == "v1.0-mini":
        return [*MINI_TRAIN, *MINI_VAL]
    from nuscenes.utils.splits import create_splits_scenes

    splits = create_splits_scenes()
    return [*splits["train"][:8], *splits["val"][:2]]


@dataclass
class Ego:
    """The ego's drive: a constant speed on an arc of constant yaw rate."""

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
        """The 4x4 ego-to-global transform at ``t``."""
        xy, h = self.pose(t)
        return transform_matrix(yaw_to_quaternion(h), [xy[0], xy[1], 0.0])


@dataclass
class SceneObject:
    """One annotated object: a box of fixed size and yaw moving at a constant velocity."""

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


@dataclass(frozen=True)
class Annotation:
    """One object at one key frame, as ``sample_annotation`` records it."""

    center: list[float]  # global xyz, on the ground
    size: np.ndarray  # w, l, h
    rotation: np.ndarray  # (4,) quaternion w, x, y, z
    num_lidar_pts: int  # a plausible count that falls with distance (at least 1)


@dataclass
class Scene:
    """Everything drawn from one scene's random generator: its log, the ego's drive and the objects."""

    index: int
    name: str
    location: str
    start_us: int  # timestamp of the first key frame
    date: str
    logfile: str
    ego: Ego
    times: np.ndarray  # (num_samples,) seconds of each key frame after the first
    objects: list[SceneObject]

    @property
    def num_samples(self) -> int:
        return len(self.times)

    def timestamp_us(self, k: int) -> int:
        """Timestamp of key frame ``k`` (the lidar's, and the sample's)."""
        return self.start_us + k * KEYFRAME_US

    def annotations(self, k: int) -> list[Annotation]:
        """Every object at key frame ``k``, in the order of ``objects``."""
        t = self.times[k]
        ego_xy, _ = self.ego.pose(t)
        out = []
        for obj in self.objects:
            xy = obj.xy(t)
            dist = max(float(np.linalg.norm(xy - ego_xy)), 1.0)
            out.append(
                Annotation(
                    center=[float(xy[0]), float(xy[1]), float(obj.size[2] / 2)],
                    size=obj.size,
                    rotation=yaw_to_quaternion(obj.yaw),
                    num_lidar_pts=max(1, int(3000 * obj.size[1] * obj.size[2] / dist**2)),
                )
            )
        return out


def simulate_scene(index: int, name: str, rng: np.random.Generator, num_samples: int, num_objects: int) -> Scene:
    """Scene ``index`` (``name``): its log, the ego's drive and ``num_objects`` objects, drawn from ``rng``."""
    location = _LOCATIONS[_MINI_LOCATION.get(name, index % len(_LOCATIONS))]
    start_us = 1_531_000_000_000_000 + index * 3_600_000_000 + int(rng.integers(0, 10**6))
    date = f"2018-07-{8 + index % 20:02d}"
    logfile = f"n015-{date}-11-{index % 60:02d}-00+0800"
    ego = _random_ego(rng)
    times = np.arange(num_samples) * (KEYFRAME_US / 1e6)
    objects = place_objects(ego, times, num_objects, rng)
    return Scene(index, name, location, start_us, date, logfile, ego, times, objects)


def _random_ego(rng: np.random.Generator) -> Ego:
    return Ego(
        origin=np.array([rng.uniform(300, 1500), rng.uniform(600, 1800)]),
        heading=rng.uniform(-math.pi, math.pi),
        speed=rng.uniform(0.0, 8.0),
        yaw_rate=rng.uniform(-0.08, 0.08),
    )


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


def _standing_attribute(cls: str, attribute: str | None) -> str | None:
    """The attribute of an object of ``cls`` that was to move but stands still instead."""
    if cls in _VEHICLES:
        return "vehicle.parked"
    if cls in _CYCLES:
        return "cycle.without_rider"
    return {"pedestrian": "pedestrian.standing"}.get(cls, attribute)


def _object_classes(count: int, rng: np.random.Generator) -> list[str]:
    """One of each detection class, then ``count - 10`` drawn by the class mix; the long ones first."""
    weights = np.array([_CLASS_WEIGHTS[c] for c in DETECTION_CLASSES])
    extra = rng.choice(len(DETECTION_CLASSES), size=count - len(DETECTION_CLASSES), p=weights / weights.sum())
    classes = [*DETECTION_CLASSES, *(DETECTION_CLASSES[i] for i in extra)]
    classes.sort(key=lambda c: -_CLASS_SIZE[c][1])  # the long ones first, while there is room
    return classes


def place_objects(ego: Ego, times: np.ndarray, count: int, rng: np.random.Generator) -> list[SceneObject]:
    """``count`` objects, one of each class first, none overlapping another or the ego at any key frame."""
    classes = _object_classes(count, rng)
    ego_xy = np.array([ego.pose(t)[0] for t in times])  # (T, 2)
    placed: list[SceneObject] = []
    for cls in classes:
        obj = _place_one(cls, placed, ego_xy, times, rng)
        if obj is not None:
            placed.append(obj)
    return placed


def _place_one(
    cls: str, placed: list[SceneObject], ego_xy: np.ndarray, times: np.ndarray, rng: np.random.Generator
) -> SceneObject | None:
    """A new object of ``cls`` that fits among ``placed``, or None when none fits in the attempts allowed."""
    size = np.array(_CLASS_SIZE[cls]) * rng.uniform(0.9, 1.1, size=3)
    speed, attribute = _motion(cls, rng)
    for attempt in range(_PLACEMENT_ATTEMPTS):
        if attempt == _STAND_STILL_AFTER and speed > 0:
            speed, attribute = 0.0, _standing_attribute(cls, attribute)
        yaw = rng.uniform(-math.pi, math.pi)
        dist = rng.uniform(4.0, _CLASS_RANGE[cls])
        angle = rng.uniform(-math.pi, math.pi)
        start = ego_xy[0] + dist * np.array([math.cos(angle), math.sin(angle)])
        velocity = speed * np.array([math.cos(yaw), math.sin(yaw)])
        obj = SceneObject(cls, size, start, velocity, yaw, attribute, rng.uniform(0.85, 1.1))
        if _fits(obj, placed, ego_xy, times):
            return obj
    return None


def _fits(obj: SceneObject, placed: list[SceneObject], ego_xy: np.ndarray, times: np.ndarray) -> bool:
    """Whether ``obj`` stays clear of the ego and of every placed object, and within its class's range."""
    track = obj.start + times[:, None] * obj.velocity  # (T, 2)
    to_ego = np.linalg.norm(track - ego_xy, axis=1)
    if to_ego.min() < obj.radius + 3.5 or to_ego.max() > _CLASS_RANGE[obj.cls]:
        return False
    for other in placed:
        other_track = other.start + times[:, None] * other.velocity
        if np.linalg.norm(track - other_track, axis=1).min() < obj.radius + other.radius + 0.5:
            return False
    return True
