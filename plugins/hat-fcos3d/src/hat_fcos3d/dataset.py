"""nuScenes seen one camera at a time: the samples a monocular 3D detector trains on.

The pack holds one record per nuScenes sample with its six images and its boxes in the
global frame (:mod:`hat.nuscenes.packer`); this dataset turns record ``i`` and camera
``c`` into item ``i * 6 + c``: that camera's image, its intrinsics, and the boxes it
sees, moved into its frame. Keeping boxes global in the pack and moving them here means
one pack serves this task and the six-camera BEV task alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from hat.data.dataset import PackedDataset
from hat.nuscenes.constants import CAMERAS
from hat.nuscenes.geometry import boxes_to_camera, project_points
from hat.registry import register_type


@register_type("NuscenesMonoDataset")
class NuscenesMonoDataset(PackedDataset):
    """Items ``{"img": HxWx3 uint8 BGR, "intrinsic": (3, 3), "gt_boxes_3d": (N, 9), "gt_labels": (N,),
    "gt_attributes": (N,), "sample_token", "camera", "sensor2ego", "ego2global"}``.

    ``gt_boxes_3d`` rows are camera-frame ``x, y, z, w, l, h, yaw, vx, vz`` (centre, nuScenes
    size order, yaw about the camera's +y axis as in :mod:`hat.nuscenes.geometry`,
    velocity in the camera's x-z plane; NaN where the devkit has none). A box is kept
    when its centre is at least ``min_depth`` in front of the camera and projects inside
    the image: the detector places each box at its projected centre, so a box whose
    centre is outside the picture cannot be assigned to any location.
    """

    def __init__(
        self,
        data_path: str,
        transforms: list | None = None,
        seed: int | None = None,
        cameras: Sequence[str] = CAMERAS,
        min_depth: float = 0.5,
    ) -> None:
        super().__init__(data_path, transforms, seed)
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown or not cameras:
            raise ValueError(f"cameras must be a non-empty subset of {list(CAMERAS)}, got {list(cameras)}")
        self.cameras = tuple(cameras)
        self.min_depth = float(min_depth)

    def __len__(self) -> int:
        return len(self.reader) * len(self.cameras)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < 0:
            index += len(self)
        record_index, camera_index = divmod(index, len(self.cameras))
        self._index = record_index
        sample = self.camera_sample(self.reader[record_index], self.cameras[camera_index])
        rng = self.rng(index)
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def camera_sample(self, record: dict[str, Any], camera: str) -> dict[str, Any]:
        """One camera's item of a packed sample, before transforms."""
        cam = record["cameras"][camera]
        img = self.decode_image(cam["image"], "bgr")
        intrinsic = np.asarray(cam["intrinsic"], dtype=np.float64)
        boxes = boxes_to_camera(record["boxes"], np.asarray(cam["ego2global"]), np.asarray(cam["sensor2ego"]))
        keep = self._visible(boxes["center"], intrinsic, img.shape[:2])
        gt = np.concatenate(
            [
                boxes["center"][keep],
                boxes["size"][keep],
                boxes["yaw"][keep, None],
                boxes["velocity"][keep][:, [0, 2]],
            ],
            axis=1,
        ).astype(np.float32)
        return {
            "img": img,
            "color_space": "bgr",
            "intrinsic": intrinsic.astype(np.float32),
            "gt_boxes_3d": gt.reshape(-1, 9),
            "gt_labels": np.asarray(record["boxes"]["label"], dtype=np.int64)[keep],
            "gt_attributes": np.asarray(record["boxes"]["attribute"], dtype=np.int64)[keep],
            "sample_token": record["sample_token"],
            "camera": camera,
            "sensor2ego": np.asarray(cam["sensor2ego"], dtype=np.float64),
            "ego2global": np.asarray(cam["ego2global"], dtype=np.float64),
        }

    def _visible(self, centers: np.ndarray, intrinsic: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
        if len(centers) == 0:
            return np.zeros(0, dtype=bool)
        in_front = centers[:, 2] >= self.min_depth
        uv = project_points(np.where(in_front[:, None], centers, 1.0), intrinsic)
        h, w = hw
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        return in_front & inside
