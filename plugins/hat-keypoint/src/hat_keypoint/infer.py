"""`hat infer keypoint`: keypoints on car crops, drawn with the car's skeleton.

The network sees one car per image (the reference pipeline crops cars by their boxes
first), so the inputs are car crops; the prediction is mapped back from the padded
128x128 input to the crop's own pixels before drawing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hat.inferer import ImageInferer
from hat.registry import register_type

#: A keypoint is drawn when its heatmap peak is above this.
MIN_SCORE = 0.1


@register_type("KeypointInferer")
class KeypointInferer(ImageInferer):
    """Core's image inferer with the car's keypoints and skeleton drawn on each crop.

    Takes no task options. Writes ``<stem>_keypoints.png`` (inputs of one run that share a
    stem get their folder's name in front: :func:`hat.inferer.output_stems`).
    """

    suffix = "keypoints"

    def draw(
        self, image: np.ndarray, sample: Mapping[str, Any], predictions: Mapping[str, Any], **context: Any
    ) -> np.ndarray:
        from hat_keypoint.visualize import draw_keypoints

        points = predictions["pred_keypoints"][0].detach().cpu().numpy().astype(np.float64)
        points = to_original(points, sample)
        scores = predictions["pred_scores"][0].detach().cpu().numpy()
        return draw_keypoints(image, np.concatenate([points, (scores > MIN_SCORE)[:, None]], axis=1))


def to_original(points: np.ndarray, sample: dict[str, Any]) -> np.ndarray:
    """Undo the padding offset and the resize recorded by the transforms."""
    offset = np.asarray(sample.get("pad_offset", (0.0, 0.0)), dtype=np.float64)
    scale = np.asarray(sample.get("scale_factor", (1.0, 1.0)), dtype=np.float64)
    return (points - offset) / scale


def demo_crops(raw: Path, count: int = 3) -> list[Path]:
    """Cut ``count`` car crops out of the first test frames (for the demo's `hat infer`)."""
    from hat_keypoint.packer import CarfusionPacker

    packer = CarfusionPacker(raw, "test")
    out_dir = Path(raw) / "demo_crops"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for record in packer.records():
        for sample in packer.pack_record(record):
            path = out_dir / f"{sample['img_name'].replace('/', '_')}.jpg"
            path.write_bytes(sample["img"])
            written.append(path)
            if len(written) >= count:
                return written
    return written
