"""The 13 nuScenes tables of a synthetic dataroot, as the devkit reads them.

Kept apart from the simulation and the drawing because this is the part that must match
the devkit's schema record for record: field names and order, token links (prev/next
chains of samples, sample data and annotations; first/last tokens of scenes and
instances) and the file layout the records point at. Tokens are md5 hashes of the seed,
the version and the record's identity, so a seed always writes the same bytes.
``visibility`` is "4" (80-100 %) for every box; each sensor has its own ego pose at its
own timestamp, a few milliseconds off the lidar's as on the real car.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hat.nuscenes.constants import ATTRIBUTES, CAMERAS, CATEGORY_OF_CLASS, LIDAR
from hat.nuscenes.geometry import matrix_to_quaternion
from hat.nuscenes.synth.world import Annotation, Scene

TABLE_NAMES = (
    "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
    "sample_annotation", "sample_data", "scene", "sensor", "visibility",
)  # fmt: skip
SENSORS = (*CAMERAS, LIDAR)
_CATEGORIES = (
    "animal", "human.pedestrian.adult", "human.pedestrian.child", "human.pedestrian.construction_worker",
    "human.pedestrian.personal_mobility", "human.pedestrian.police_officer", "human.pedestrian.stroller",
    "human.pedestrian.wheelchair", "movable_object.barrier", "movable_object.debris",
    "movable_object.pushable_pullable", "movable_object.trafficcone", "static_object.bicycle_rack",
    "vehicle.bicycle", "vehicle.bus.bendy", "vehicle.bus.rigid", "vehicle.car", "vehicle.construction",
    "vehicle.emergency.ambulance", "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
)  # fmt: skip
_VISIBILITY = (("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100"))


def sample_filename(logfile: str, channel: str, timestamp: int) -> str:
    """Where ``channel``'s file of a key frame lies under the dataroot (a JPEG, or the lidar's .pcd.bin)."""
    suffix = "pcd.bin" if channel == LIDAR else "jpg"
    return f"samples/{channel}/{logfile}__{channel}__{timestamp}.{suffix}"


def _link(tokens: Sequence[str], k: int) -> tuple[str, str]:
    """The prev and next tokens of element ``k`` of a chain ("" at the ends)."""
    return (tokens[k - 1] if k > 0 else "", tokens[k + 1] if k + 1 < len(tokens) else "")


@dataclass(frozen=True)
class SceneTokens:
    """The tokens of one scene's records, made up front so that records can point forward."""

    log: str
    scene: str
    calibrated_sensor: dict[str, str]  # by channel
    instances: list[str]  # by object
    samples: list[str]  # by key frame
    annotations: list[list[str]]  # by key frame, then object
    sample_data: dict[str, list[str]]  # by channel, then key frame


class NuscenesTables:
    """Accumulates the 13 tables' records, scene by scene, and writes them as JSON."""

    def __init__(self, seed: int, version: str, image_width: int, image_height: int) -> None:
        self.seed = seed
        self.version = version
        self.width = image_width
        self.height = image_height
        self.tables: dict[str, list[dict]] = {name: [] for name in TABLE_NAMES}
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
            for ch in SENSORS
        ]
        self.sensor_token = {r["channel"]: r["token"] for r in self.tables["sensor"]}
        self.maps: dict[str, dict] = {}

    def token(self, *parts: object) -> str:
        """The token of the record named by ``parts``: the same for the same seed, version and parts."""
        key = ":".join(str(p) for p in (self.seed, self.version, *parts))
        return hashlib.md5(key.encode()).hexdigest()

    def scene_tokens(self, scene: Scene) -> SceneTokens:
        name, num_samples, num_objects = scene.name, scene.num_samples, len(scene.objects)
        return SceneTokens(
            log=self.token("log", name),
            scene=self.token("scene", name),
            calibrated_sensor={ch: self.token("calibrated_sensor", name, ch) for ch in SENSORS},
            instances=[self.token("instance", name, i) for i in range(num_objects)],
            samples=[self.token("sample", name, k) for k in range(num_samples)],
            annotations=[
                [self.token("annotation", name, k, i) for i in range(num_objects)] for k in range(num_samples)
            ],
            sample_data={ch: [self.token("sample_data", name, ch, k) for k in range(num_samples)] for ch in SENSORS},
        )

    def add_log(self, scene: Scene, tokens: SceneTokens) -> None:
        self.tables["log"].append(
            {
                "token": tokens.log,
                "logfile": scene.logfile,
                "vehicle": "n015",
                "date_captured": scene.date,
                "location": scene.location,
            }
        )

    def add_map(self, location: str, log_token: str) -> str | None:
        """Add the log to its location's map; the filename of the map image when the location is new."""
        filename = None
        if location not in self.maps:
            token = self.token("map", location)
            filename = f"maps/{token}.png"
            record = {"token": token, "log_tokens": [], "category": "semantic_prior", "filename": filename}
            self.maps[location] = record
            self.tables["map"].append(record)
        self.maps[location]["log_tokens"].append(log_token)
        return filename

    def add_calibrated_sensors(
        self, tokens: SceneTokens, sensor2ego: Mapping[str, np.ndarray], intrinsic: Mapping[str, np.ndarray]
    ) -> None:
        """One calibration per sensor and scene: the rig's ``sensor2ego``, and each camera's ``intrinsic``."""
        for ch in SENSORS:
            matrix = sensor2ego[ch]
            self.tables["calibrated_sensor"].append(
                {
                    "token": tokens.calibrated_sensor[ch],
                    "sensor_token": self.sensor_token[ch],
                    "translation": matrix[:3, 3].tolist(),
                    "rotation": matrix_to_quaternion(matrix[:3, :3]).tolist(),
                    "camera_intrinsic": intrinsic[ch].tolist() if ch != LIDAR else [],
                }
            )

    def add_instances(self, scene: Scene, tokens: SceneTokens) -> None:
        for i, obj in enumerate(scene.objects):
            self.tables["instance"].append(
                {
                    "token": tokens.instances[i],
                    "category_token": self.category_token[CATEGORY_OF_CLASS[obj.cls]],
                    "nbr_annotations": scene.num_samples,
                    "first_annotation_token": tokens.annotations[0][i],
                    "last_annotation_token": tokens.annotations[-1][i],
                }
            )

    def add_scene(self, scene: Scene, tokens: SceneTokens) -> None:
        self.tables["scene"].append(
            {
                "token": tokens.scene,
                "log_token": tokens.log,
                "nbr_samples": scene.num_samples,
                "first_sample_token": tokens.samples[0],
                "last_sample_token": tokens.samples[-1],
                "name": scene.name,
                "description": f"synthetic drive in {scene.location}, {len(scene.objects)} objects",
            }
        )

    def add_sample(self, scene: Scene, tokens: SceneTokens, k: int) -> None:
        prev, nxt = _link(tokens.samples, k)
        self.tables["sample"].append(
            {
                "token": tokens.samples[k],
                "timestamp": scene.timestamp_us(k),
                "prev": prev,
                "next": nxt,
                "scene_token": tokens.scene,
            }
        )

    def add_annotations(self, scene: Scene, tokens: SceneTokens, k: int, annotations: Sequence[Annotation]) -> None:
        """Key frame ``k``'s annotations, one per object, each chained to the object's previous and next."""
        for i, (obj, ann) in enumerate(zip(scene.objects, annotations, strict=True)):
            prev, nxt = _link([chain[i] for chain in tokens.annotations], k)
            self.tables["sample_annotation"].append(
                {
                    "token": tokens.annotations[k][i],
                    "sample_token": tokens.samples[k],
                    "instance_token": tokens.instances[i],
                    "visibility_token": "4",
                    "attribute_tokens": [self.attribute_token[obj.attribute]] if obj.attribute else [],
                    "translation": ann.center,
                    "size": ann.size.tolist(),
                    "rotation": ann.rotation.tolist(),
                    "prev": prev,
                    "next": nxt,
                    "num_lidar_pts": ann.num_lidar_pts,
                    "num_radar_pts": 0,
                }
            )

    def add_ego_pose(self, scene: Scene, channel: str, k: int, timestamp: int, ego2global: np.ndarray) -> str:
        """The ego's pose when ``channel`` fired at key frame ``k``; returns its token."""
        token = self.token("ego_pose", scene.name, channel, k)
        self.tables["ego_pose"].append(
            {
                "token": token,
                "timestamp": timestamp,
                "rotation": matrix_to_quaternion(ego2global[:3, :3]).tolist(),
                "translation": ego2global[:3, 3].tolist(),
            }
        )
        return token

    def add_sample_data(
        self, tokens: SceneTokens, channel: str, k: int, timestamp: int, ego_pose_token: str, filename: str
    ) -> None:
        """``channel``'s key-frame file at key frame ``k``, chained through the scene."""
        lidar = channel == LIDAR
        prev, nxt = _link(tokens.sample_data[channel], k)
        self.tables["sample_data"].append(
            {
                "token": tokens.sample_data[channel][k],
                "sample_token": tokens.samples[k],
                "ego_pose_token": ego_pose_token,
                "calibrated_sensor_token": tokens.calibrated_sensor[channel],
                "timestamp": timestamp,
                "fileformat": "pcd" if lidar else "jpg",
                "is_key_frame": True,
                "height": 0 if lidar else self.height,
                "width": 0 if lidar else self.width,
                "filename": filename,
                "prev": prev,
                "next": nxt,
            }
        )

    def write(self, table_dir: Path) -> None:
        """Every table as ``<table_dir>/<name>.json``."""
        table_dir.mkdir(parents=True, exist_ok=True)
        for name, records in self.tables.items():
            (table_dir / f"{name}.json").write_text(json.dumps(records, indent=0))
