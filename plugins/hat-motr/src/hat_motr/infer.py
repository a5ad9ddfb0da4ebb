"""`hat infer motr --input DIR`: a folder of frames tracked as one sequence, drawn with identities.

The frames (sorted by name) are one video: each goes through the config's validation
transforms, both exported graphs run in onnxruntime with the tracker between them (the
same :class:`~hat_motr.sequence.MotrSequenceRunner` as int_infer), and every track is
drawn in its identity's own colour with its id. Written under ``--save-path``:

* ``<stem>_tracks.png`` for every frame;
* ``tracks.avi``, the frames as a short video (Motion-JPEG: every OpenCV build, the
  headless wheel included, writes it without an external codec);
* ``tracks_strip.png``, up to eight frames spread over the sequence, side by side, to
  look at in a browser or a report without a video player.
"""

from __future__ import annotations

import colorsys
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from hat.errors import UserError
from hat.inferer import ImageFileError, ImageInferer, output_stems, read_image, save_png
from hat.registry import register_type
from hat_motr.sequence import MotrSequenceRunner

VIDEO_NAME = "tracks.avi"
STRIP_NAME = "tracks_strip.png"
STRIP_FRAMES = 8


def identity_colour(identity: int) -> tuple[int, int, int]:
    """A BGR colour of its own for each identity (hues spread by the golden ratio)."""
    hue = (identity * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_tracks(image: np.ndarray, ids: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``image`` with each box ``x1, y1, x2, y2`` (its pixels) drawn and labelled with its identity."""
    out = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 240))
    scale = max(0.35, min(image.shape[:2]) / 600)
    for identity, box in zip(np.asarray(ids).reshape(-1), np.asarray(boxes).reshape(-1, 4), strict=True):
        colour = identity_colour(int(identity))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        label = str(int(identity))
        (w, h), base = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y1 - h - base)
        cv2.rectangle(out, (x1, top), (x1 + w + 2, top + h + base), colour, -1)
        cv2.putText(out, label, (x1 + 1, top + h), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def strip(frames: Sequence[np.ndarray], count: int = STRIP_FRAMES, height: int = 180) -> np.ndarray:
    """Up to ``count`` frames spread evenly over ``frames``, scaled to ``height`` and placed side by side."""
    picks = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    tiles = []
    for i in picks:
        frame = frames[i]
        width = max(1, round(frame.shape[1] * height / frame.shape[0]))
        tiles.append(cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA))
    return np.concatenate(tiles, axis=1)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float) -> Path:
    """``frames`` (BGR, all one size) as a Motion-JPEG AVI, written beside ``path`` and renamed onto it."""
    height, width = frames[0].shape[:2]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the video private to this user
    try:
        writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (width, height))
        if not writer.isOpened():
            raise ImageFileError(f"cannot write the video {path}", where=str(path), hint="check --save-path")
        for frame in frames:
            writer.write(frame)
        writer.release()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@register_type("MotrInferer")
class MotrInferer(ImageInferer):
    """The frames of ``--input`` tracked as one sequence; see the module docstring.

    ``runner``: the config's :class:`~hat_motr.sequence.MotrSequenceRunner` (the tracker
    and the graph sizes). Task option ``--fps`` (default 10): the written video's rate.
    """

    suffix = "tracks"

    def __init__(self, transforms: Sequence[Any], runner: MotrSequenceRunner) -> None:
        super().__init__(transforms, post_process=None)
        self.runner = runner

    def __call__(self, paths: Sequence[Path], model: Any, save_path: Path, *, fps: float = 10.0) -> list[Path]:
        if not hasattr(model, "run_graph"):
            raise UserError(
                "hat infer motr needs both exported graphs (export/model.onnx and export/qim/model.onnx)",
                hint="run `hat export motr` (it writes both)",
            )
        if fps <= 0:
            raise UserError(f"--fps must be positive, got {fps}")
        self.runner.reset()
        rng = np.random.default_rng(0)
        save_path = Path(save_path)
        written: list[Path] = []
        drawn_frames: list[np.ndarray] = []
        for index, (path, stem) in enumerate(zip(paths, output_stems(paths), strict=True)):
            image = read_image(path)
            if drawn_frames and image.shape != drawn_frames[0].shape:
                raise ImageFileError(
                    f"{path} is {image.shape[1]}x{image.shape[0]}, but the sequence's first frame is "
                    f"{drawn_frames[0].shape[1]}x{drawn_frames[0].shape[0]}",
                    where=str(path),
                    hint="pass the frames of one video (one size) to --input",
                )
            sample: dict[str, Any] = {"img": image, "color_space": "bgr"}
            for transform in self.transforms:
                sample = transform(sample, rng)
            batch = {
                "img": torch.as_tensor(sample["img"])[None],
                "seq": ["input"],
                "frame": [index + 1],
                "first_frame": [index == 0],
                "scale_factor": [sample.get("scale_factor", (1.0, 1.0))],
                "pad_offset": [sample.get("pad_offset", (0.0, 0.0))],
                "ori_shape": [image.shape[:2]],
            }
            with torch.no_grad():
                tracks = self.runner(model.run_graph, batch)
            drawn = draw_tracks(image, tracks["track_ids"][0].numpy(), tracks["track_boxes"][0].numpy())
            drawn_frames.append(drawn)
            written.append(save_png(save_path / f"{stem}_{self.suffix}.png", drawn))
        if drawn_frames:
            written.append(write_video(save_path / VIDEO_NAME, drawn_frames, fps))
            written.append(save_png(save_path / STRIP_NAME, strip(drawn_frames)))
        return written


def demo_frames(raw: Path, count: int = 24) -> list[Path]:
    """The first ``count`` frames of the second half of the first sequence (the demo's `hat infer`)."""
    sequences = sorted(p for p in (Path(raw) / "train").glob("MOT17-*-FRCNN") if p.is_dir())
    if not sequences:
        return []
    images = sorted((sequences[0] / "img1").glob("*.jpg"))
    start = len(images) // 2
    return images[start : start + count]
