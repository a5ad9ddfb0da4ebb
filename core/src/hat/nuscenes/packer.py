"""Pack nuScenes: one record per key-frame sample, read through nuscenes-devkit.

Each packed sample holds what both camera tasks need and nothing they would have to
look up again: the six camera images as their original JPEG bytes with their
intrinsics and poses, the lidar key frame's ego pose (the pose the devkit's evaluator
measures distances from), and every annotated box whose category maps to one of the ten
detection classes, in the global frame, with its attribute, velocity (the devkit's
``box_velocity``, NaN where it has none) and lidar point count. The record layout is
documented at :func:`pack_sample`.

Splits are the devkit's own scene lists (``create_splits_scenes``): ``--split train``
packs ``mini_train`` of v1.0-mini and ``train`` of v1.0-trainval, ``--split val``
``mini_val`` / ``val``; v1.0-test has ``--split test`` (no boxes).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hat.data.packer import Packer
from hat.errors import BadSourceRecord, UserError
from hat.nuscenes.constants import ATTRIBUTES, CAMERAS, DETECTION_CLASSES, LIDAR, NO_ATTRIBUTE
from hat.nuscenes.devkit import check_dataroot, devkit_split, load_nuscenes, require_devkit, split_scene_names
from hat.nuscenes.geometry import transform_matrix

_CLASS_INDEX = {name: i for i, name in enumerate(DETECTION_CLASSES)}
_ATTRIBUTE_INDEX = {name: i for i, name in enumerate(ATTRIBUTES)}


class NuscenesPacker(Packer):
    """nuScenes key frames -> one sample each: six images, calibration, poses, global boxes."""

    dataset: ClassVar[str] = "nuscenes"
    layout_hint: ClassVar[str | None] = "<src>/<version>/*.json (the 13 tables) and <src>/samples/CAM_*/*.jpg"
    progress_every: ClassVar[int | None] = 100

    def __init__(self, src: Path, split: str, *, version: str = "v1.0-mini") -> None:
        super().__init__(src, split)
        require_devkit("`hat pack nuscenes`")
        self.version = version
        self.devkit_split = devkit_split(version, split)  # validates version and split

    # The devkit's NuScenes object is never pickled to workers: each process loads (or, when
    # forked after records(), inherits) its own through load_nuscenes's per-process cache.
    def _nusc(self) -> Any:
        return load_nuscenes(str(self.src), self.version)

    def records(self) -> Sequence[str]:
        if not self.src.is_dir():
            raise UserError(f"source not found: {self.src}", hint="pass the nuScenes dataroot as --src")
        check_dataroot(self.src, self.version)
        nusc = self._nusc()
        wanted = set(split_scene_names(self.version, self.split))
        tokens: list[str] = []
        for scene in nusc.scene:
            if scene["name"] not in wanted:
                continue
            token = scene["first_sample_token"]
            while token:
                tokens.append(token)
                token = nusc.get("sample", token)["next"]
        return tokens

    def pack_record(self, record: str) -> Iterator[dict[str, Any]]:
        yield pack_sample(self._nusc(), record, self.src)

    def describe_source(self) -> str:
        return f"{self.src} ({self.version}, {self.devkit_split})"

    def extra_meta(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "devkit_split": self.devkit_split,
            "classes": list(DETECTION_CLASSES),
            "attributes": list(ATTRIBUTES),
            "cameras": list(CAMERAS),
        }


def _pose(record: dict) -> np.ndarray:
    return transform_matrix(record["rotation"], record["translation"])


def pack_sample(nusc: Any, sample_token: str, dataroot: Path) -> dict[str, Any]:
    """The packed record of one sample (the layout every nuScenes dataset reads).

    ``{"sample_token", "scene_name", "timestamp", "lidar_ego2global" (4, 4),
    "cameras": {CAM: {"image" (JPEG bytes), "filename", "width", "height",
    "intrinsic" (3, 3), "sensor2ego" (4, 4), "ego2global" (4, 4), "sample_data_token"}},
    "boxes": {"center" (N, 3), "size" (N, 3) wlh, "rotation" (N, 4) wxyz,
    "velocity" (N, 2), "label" (N,), "attribute" (N,) (-1 = none), "num_lidar_pts" (N,),
    "instance_token", "annotation_token"}}``; arrays float64 / int64, boxes global.
    """
    from nuscenes.eval.detection.utils import category_to_detection_name

    sample = nusc.get("sample", sample_token)
    scene = nusc.get("scene", sample["scene_token"])
    if LIDAR not in sample["data"]:
        raise BadSourceRecord(f"sample {sample_token} has no {LIDAR} key frame", file=_table(nusc, "sample_data"))
    lidar = nusc.get("sample_data", sample["data"][LIDAR])
    cameras: dict[str, dict[str, Any]] = {}
    for channel in CAMERAS:
        if channel not in sample["data"]:
            raise BadSourceRecord(f"sample {sample_token} has no {channel} key frame", file=_table(nusc, "sample_data"))
        sd = nusc.get("sample_data", sample["data"][channel])
        calib = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        path = Path(dataroot) / sd["filename"]
        try:
            image = path.read_bytes()
        except OSError as exc:
            raise BadSourceRecord(f"cannot read the {channel} image: {exc.strerror}", file=str(path)) from None
        cameras[channel] = {
            "image": image,
            "filename": sd["filename"],
            "width": int(sd["width"]),
            "height": int(sd["height"]),
            "intrinsic": np.asarray(calib["camera_intrinsic"], dtype=np.float64).reshape(3, 3),
            "sensor2ego": _pose(calib),
            "ego2global": _pose(nusc.get("ego_pose", sd["ego_pose_token"])),
            "sample_data_token": sd["token"],
        }

    rows: list[tuple] = []
    for ann_token in sample["anns"]:
        ann = nusc.get("sample_annotation", ann_token)
        name = category_to_detection_name(ann["category_name"])
        if name is None:
            continue
        attributes = ann["attribute_tokens"]
        if len(attributes) > 1:
            raise BadSourceRecord(
                f"annotation {ann_token} has {len(attributes)} attributes (at most one allowed)",
                file=_table(nusc, "sample_annotation"),
            )
        attribute = _ATTRIBUTE_INDEX[nusc.get("attribute", attributes[0])["name"]] if attributes else NO_ATTRIBUTE
        rows.append(
            (
                ann["translation"],
                ann["size"],
                ann["rotation"],
                nusc.box_velocity(ann_token)[:2],
                _CLASS_INDEX[name],
                attribute,
                ann["num_lidar_pts"],
                ann["instance_token"],
                ann_token,
            )
        )
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if rows else [[]] * 9
    boxes = {
        "center": np.asarray(columns[0], dtype=np.float64).reshape(n, 3),
        "size": np.asarray(columns[1], dtype=np.float64).reshape(n, 3),
        "rotation": np.asarray(columns[2], dtype=np.float64).reshape(n, 4),
        "velocity": np.asarray(columns[3], dtype=np.float64).reshape(n, 2),
        "label": np.asarray(columns[4], dtype=np.int64).reshape(n),
        "attribute": np.asarray(columns[5], dtype=np.int64).reshape(n),
        "num_lidar_pts": np.asarray(columns[6], dtype=np.int64).reshape(n),
        "instance_token": list(columns[7]),
        "annotation_token": list(columns[8]),
    }
    return {
        "sample_token": sample_token,
        "scene_name": scene["name"],
        "timestamp": int(sample["timestamp"]),
        "lidar_ego2global": _pose(nusc.get("ego_pose", lidar["ego_pose_token"])),
        "cameras": cameras,
        "boxes": boxes,
    }


def _table(nusc: Any, name: str) -> str:
    return str(Path(nusc.dataroot) / nusc.version / f"{name}.json")
