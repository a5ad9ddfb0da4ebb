"""`hat infer fcos3d --input IMG --calib JSON`: 3D boxes found in a camera image, drawn on it.

A monocular 3D detector needs the camera matrix to turn pixels and depths into metres,
so ``--calib`` names a JSON file with the 3x3 intrinsics, as nuScenes'
``calibrated_sensor`` record writes them (``{"camera_intrinsic": [[fx, 0, cx], [0, fy, cy],
[0, 0, 1]]}``; ``"intrinsic"`` or a bare 3x3 list also work), for the image as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat.errors import UserError
from hat.inferer import ImageInferer, ModelFn
from hat.postprocess import PostProcessFn
from hat.registry import register_type


def load_intrinsic(path: Path) -> np.ndarray:
    """The 3x3 camera matrix of a calibration JSON (see the module docstring)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the calibration file {path}: {exc}") from exc
    if isinstance(data, dict):
        data = data.get("camera_intrinsic", data.get("intrinsic"))
    matrix = np.asarray(data, dtype=np.float64) if data is not None else np.zeros(0)
    if matrix.shape != (3, 3) or not np.isfinite(matrix).all() or matrix[0, 0] <= 0 or matrix[1, 1] <= 0:
        raise UserError(
            f"{path} has no usable 3x3 camera matrix",
            hint='write {"camera_intrinsic": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]} for the image as given',
        )
    return matrix


@register_type("FCOS3DInferer")
class FCOS3DInferer(ImageInferer):
    """Core's image inferer with the 3D boxes scoring at least ``score_threshold`` drawn.

    Its one task option is ``--calib`` (see the module docstring), which it requires.
    Writes ``<stem>_boxes3d.png``.
    """

    suffix = "boxes3d"

    def __init__(
        self, transforms: Sequence[Callable[..., dict]], post_process: PostProcessFn, score_threshold: float = 0.3
    ) -> None:
        super().__init__(transforms, post_process)
        self.score_threshold = float(score_threshold)

    def __call__(
        self, paths: Sequence[Path], model: ModelFn, save_path: Path, *, calib: Path | None = None
    ) -> list[Path]:
        """``calib``: the camera calibration JSON of the images as given (required)."""
        if calib is None:
            raise UserError(
                "fcos3d needs the camera's intrinsics to place boxes in 3D",
                hint='pass --calib FILE.json with {"camera_intrinsic": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]}',
            )
        return self.run(paths, model, save_path, intrinsic=load_intrinsic(calib))

    def sample(self, image: np.ndarray, *, intrinsic: np.ndarray, **context: Any) -> dict[str, Any]:
        return {
            "img": image,
            "color_space": "bgr",
            "intrinsic": intrinsic.astype(np.float32),
            "gt_boxes_3d": np.zeros((0, 9), np.float32),
        }

    def batch(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        return {"img": sample["img"][None], "intrinsic": torch.as_tensor(sample["intrinsic"])[None]}

    def draw(
        self,
        image: np.ndarray,
        sample: Mapping[str, Any],
        predictions: Mapping[str, Any],
        *,
        intrinsic: np.ndarray,
        **context: Any,
    ) -> np.ndarray:
        from hat_fcos3d.visualize import draw_boxes_3d

        det = predictions["detections_cam"][0]
        keep = det["score"] >= self.score_threshold
        boxes = torch.cat([det["center"], det["size"], det["yaw"][:, None]], dim=1)[keep].numpy()
        # Boxes are metric: drawn through the original camera onto the original image.
        return draw_boxes_3d(image, boxes, det["label"][keep].tolist(), intrinsic, det["score"][keep].tolist())


def demo_images(raw: Path, count: int = 3) -> list[Path]:
    """The first ``count`` CAM_FRONT images of the synthetic dataroot's validation scenes."""
    return [path for path, _ in _front_camera_frames(raw, count)]


def demo_calib(raw: Path) -> dict[str, Path]:
    """``{"calib": path}``: the CAM_FRONT intrinsics of those images, written as a calibration JSON."""
    frames = _front_camera_frames(raw, 1)
    out = Path(raw) / "demo_calib_cam_front.json"
    out.write_text(json.dumps({"camera_intrinsic": frames[0][1]}, indent=2) + "\n")
    return {"calib": out}


def _front_camera_frames(raw: Path, count: int) -> list[tuple[Path, list[list[float]]]]:
    from hat.nuscenes.devkit import load_nuscenes, split_scene_names

    nusc = load_nuscenes(Path(raw), "v1.0-mini")
    val_scenes = set(split_scene_names("v1.0-mini", "val"))
    frames = []
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in val_scenes:
            continue
        data = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
        calibrated = nusc.get("calibrated_sensor", data["calibrated_sensor_token"])
        frames.append((Path(raw) / data["filename"], calibrated["camera_intrinsic"]))
        if len(frames) == count:
            break
    return frames
