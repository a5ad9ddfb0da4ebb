"""NDS/mAP of camera-frame detections: each image's boxes moved to the global frame, then
core's :class:`~hat.nuscenes.metric.NuscenesMetric` (the devkit's DetectionEval).

The model and its post-process know only the camera they look through; the batch
carries that camera's pose (``sensor2ego``, ``ego2global``) and its sample token, which is
all the move to the global frame needs. Neighbouring cameras overlap, so an object near
the edge of two views is found twice; the per-sample merge removes such duplicates by
class-aware rotated NMS in the global bird's-eye view, as the field does for mono models.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from hat.nuscenes.geometry import boxes_from_camera, quaternion_yaw
from hat.nuscenes.metric import NuscenesMetric, as_numpy
from hat.ops.rotated_nms import rotated_nms_bev
from hat.registry import register_type


def detections_to_global(detections_cam: Mapping[str, Any], sensor2ego: Any, ego2global: Any) -> dict[str, Any]:
    """One image's camera-frame detections (FCOS3DPostProcess) as global ones (NuscenesMetric)."""
    moved = boxes_from_camera(
        as_numpy(detections_cam["center"]),
        as_numpy(detections_cam["size"]),
        as_numpy(detections_cam["yaw"]),
        as_numpy(detections_cam["velocity"]),
        as_numpy(ego2global),
        as_numpy(sensor2ego),
    )
    return {
        **moved,
        "label": as_numpy(detections_cam["label"], np.int64),
        "score": as_numpy(detections_cam["score"], np.float64),
        "attribute": as_numpy(detections_cam["attribute"], np.int64),
    }


@register_type("NuscenesMonoMetric")
class NuscenesMonoMetric(NuscenesMetric):
    """:class:`NuscenesMetric` for a monocular model: reads ``outputs["detections_cam"]``
    and the batch's ``sample_token``, ``sensor2ego`` and ``ego2global`` (one per image).

    ``merge_iou_threshold``: two same-class boxes of one sample (from any cameras) that
    overlap more than this in the global bird's-eye view are one object; the
    lower-scored goes. ``None`` keeps every box.
    """

    def __init__(self, *args: Any, merge_iou_threshold: float | None = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if merge_iou_threshold is not None and not 0.0 <= merge_iou_threshold <= 1.0:
            raise ValueError(f"merge_iou_threshold must be in [0, 1] or null, got {merge_iou_threshold}")
        self.merge_iou_threshold = merge_iou_threshold

    def merge(self, parts: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        joined = super().merge(parts)
        if self.merge_iou_threshold is None or len(parts) < 2 or len(joined["score"]) < 2:
            return joined
        yaw = np.array([quaternion_yaw(q) for q in joined["rotation"]])
        center, size = joined["center"], joined["size"]
        bev = np.stack([center[:, 0], center[:, 1], size[:, 0], size[:, 1], yaw], axis=1)
        # Class-aware in one call: shift each class far away from the others.
        offset = joined["label"].astype(np.float64)[:, None] * 1.0e4
        bev[:, :2] += offset
        keep = rotated_nms_bev(torch.from_numpy(bev), torch.from_numpy(joined["score"]), self.merge_iou_threshold)
        keep = keep.numpy()
        return {name: values[keep] for name, values in joined.items()}

    def update(self, batch: Any, outputs: Any) -> None:
        per_image = outputs["detections_cam"]
        global_dets = []
        for i, det in enumerate(per_image):
            moved = detections_to_global(det, batch["sensor2ego"][i], batch["ego2global"][i])
            global_dets.append({"sample_token": batch["sample_token"][i], **moved})
        super().update(batch, {"detections": global_dets})
