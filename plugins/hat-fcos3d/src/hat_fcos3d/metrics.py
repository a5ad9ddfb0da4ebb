"""NDS/mAP of camera-frame detections: each image's boxes moved to the global frame, then
core's :class:`~hat.nuscenes.metric.NuscenesMetric` (the devkit's DetectionEval).

The model and its post-process know only the camera they look through; the batch
carries that camera's pose (``sensor2ego``, ``ego2global``) and its sample token, which is
all the move to the global frame needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from hat.nuscenes.geometry import boxes_from_camera
from hat.nuscenes.metric import NuscenesMetric
from hat.registry import register_type


def _numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").numpy()
    return np.asarray(value)


def detections_to_global(detections_cam: Mapping[str, Any], sensor2ego: Any, ego2global: Any) -> dict[str, Any]:
    """One image's camera-frame detections (FCOS3DPostProcess) as global ones (NuscenesMetric)."""
    moved = boxes_from_camera(
        _numpy(detections_cam["center"]),
        _numpy(detections_cam["size"]),
        _numpy(detections_cam["yaw"]),
        _numpy(detections_cam["velocity"]),
        _numpy(ego2global),
        _numpy(sensor2ego),
    )
    return {
        **moved,
        "label": _numpy(detections_cam["label"]).astype(np.int64),
        "score": _numpy(detections_cam["score"]).astype(np.float64),
        "attribute": _numpy(detections_cam["attribute"]).astype(np.int64),
    }


@register_type("NuscenesMonoMetric")
class NuscenesMonoMetric(NuscenesMetric):
    """:class:`NuscenesMetric` for a monocular model: reads ``outputs["detections_cam"]``
    and the batch's ``sample_token``, ``sensor2ego`` and ``ego2global`` (one per image)."""

    def update(self, batch: Any, outputs: Any) -> None:
        per_image = outputs["detections_cam"]
        global_dets = []
        for i, det in enumerate(per_image):
            moved = detections_to_global(det, batch["sensor2ego"][i], batch["ego2global"][i])
            global_dets.append({"sample_token": batch["sample_token"][i], **moved})
        super().update(batch, {"detections": global_dets})
