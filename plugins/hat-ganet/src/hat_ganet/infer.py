"""`hat infer ganet`: the lanes found on road frames, drawn in distinct colours.

The frames are CULane's 1640x590 camera images; the config's validation transforms crop
and resize them for the network, and the post-process maps the lanes back to the frame's
own pixels (through the sample's ``img2orig``), so they are drawn on the frame as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hat.inferer import ImageInferer
from hat.registry import register_type

#: One colour per lane (BGR), cycled: distinct on road greys and at night.
LANE_COLOURS = ((0, 0, 255), (0, 255, 0), (255, 0, 0), (0, 255, 255), (255, 0, 255), (255, 255, 0))


@register_type("LaneInferer")
class LaneInferer(ImageInferer):
    """Core's image inferer with each predicted lane drawn as a polyline of its own colour.

    Takes no task options. Writes ``<stem>_lanes.png``.
    """

    suffix = "lanes"

    def sample(self, image: np.ndarray, **context: Any) -> dict[str, Any]:
        # the lane transforms carry lanes and the pixel mapping along with the image
        return {
            "img": image,
            "color_space": "bgr",
            "lanes": [],
            "lanes_orig": [],
            "img2orig": np.eye(3, dtype=np.float32),
        }

    def batch(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        return {"img": sample["img"][None], "img2orig": torch.as_tensor(sample["img2orig"])[None]}

    def draw(
        self, image: np.ndarray, sample: Mapping[str, Any], predictions: Mapping[str, Any], **context: Any
    ) -> np.ndarray:
        return draw_lanes(image, predictions["pred_lanes"][0])


def draw_lanes(image: np.ndarray, lanes: list[Any], thickness: int = 6) -> np.ndarray:
    """``image`` with ``lanes`` ((N, 2) points in its pixels) drawn over it."""
    out = image.copy()
    for index, lane in enumerate(lanes):
        points = np.asarray(lane, dtype=np.float64).reshape(-1, 2)
        if len(points) < 2:
            continue
        cv2.polylines(
            out, [np.round(points).astype(np.int32)], False, LANE_COLOURS[index % len(LANE_COLOURS)], thickness
        )
    return out


def demo_frames(raw: Path, count: int = 3) -> list[Path]:
    """The first ``count`` frames of the test list (for the demo's `hat infer`)."""
    frames: list[Path] = []
    for line in (Path(raw) / "list" / "test.txt").read_text().splitlines():
        if line.strip():
            frames.append(Path(raw) / line.split()[0].lstrip("/"))
        if len(frames) >= count:
            break
    return frames
