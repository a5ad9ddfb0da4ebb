"""`hat infer keypoint`: keypoints on car crops, drawn with the car's skeleton.

The network sees one car per image (the reference pipeline crops cars by their boxes
first), so the inputs are car crops; the prediction is mapped back from the padded
128x128 input to the crop's own pixels before drawing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hat.registry import register_type


@register_type("KeypointInferer")
class KeypointInferer:
    def __init__(self, transforms: Sequence[Callable[..., dict]], post_process: Callable[..., dict]) -> None:
        self.transforms = list(transforms)
        self.post_process = post_process

    def __call__(self, paths: Sequence[Path], model: Callable[[dict], dict], save_path: Path) -> list[Path]:
        from hat_keypoint.visualize import draw_keypoints, save_png

        written = []
        rng = np.random.default_rng(0)
        for path in paths:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                from hat.errors import UserError

                raise UserError(f"cannot read image {path}", hint="pass a JPEG or PNG file")
            sample: dict[str, Any] = {"img": image, "color_space": "bgr"}
            for transform in self.transforms:
                sample = transform(sample, rng)
            batch = {"img": sample["img"][None]}
            outputs = self.post_process(model(batch), batch)
            points = outputs["pred_keypoints"][0].detach().cpu().numpy().astype(np.float64)
            points = to_original(points, sample)
            scores = outputs["pred_scores"][0].detach().cpu().numpy()
            drawn = draw_keypoints(image, np.concatenate([points, (scores > 0.1)[:, None]], axis=1))
            out = Path(save_path) / f"{Path(path).stem}_keypoints.png"
            save_png(out, drawn)
            written.append(out)
        return written


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
