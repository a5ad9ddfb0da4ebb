"""Core's image inferer: one reader, one atomic save_png, one error type, and the
post-process contract (reset once per call, predictions reach the task's draw)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from hat.errors import UserError
from hat.inferer import ImageFileError, ImageInferer, read_image, save_png
from hat.postprocess import PostProcess


def test_save_png_writes_atomically_and_reads_back(tmp_path: Path) -> None:
    img = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
    path = save_png(tmp_path / "sub" / "out.png", img)
    assert path == tmp_path / "sub" / "out.png"
    np.testing.assert_array_equal(cv2.imread(str(path)), img)
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary file left


def test_save_png_refuses_an_unwritable_path_with_one_error_type(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImageFileError, match="cannot write .*a-file/out.png") as info:
        save_png(blocker / "out.png", img)
    assert isinstance(info.value, UserError)  # exit 2 in the CLI, no traceback
    with pytest.raises(ImageFileError, match="uint8"):
        save_png(tmp_path / "float.png", np.zeros((4, 4, 3), np.float32))
    assert not (tmp_path / "float.png").exists()


def test_read_image_says_which_file_is_not_an_image(tmp_path: Path) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageFileError, match="cannot read image .*notes.jpg"):
        read_image(bad)
    with pytest.raises(ImageFileError, match="not found"):
        read_image(tmp_path / "missing.png")


class CountingPostProcess(PostProcess):
    """Stateful: numbers the frames it has seen since the last reset."""

    def __init__(self) -> None:
        self.frame = 0
        self.resets = 0

    def __call__(self, outputs: Mapping[str, Any], batch: Any = None) -> dict[str, Any]:
        self.frame += 1
        return {**outputs, "frame": self.frame}

    def reset(self) -> None:
        self.frame = 0
        self.resets += 1


class FrameInferer(ImageInferer):
    suffix = "frame"

    def draw(self, image: np.ndarray, sample: Mapping[str, Any], predictions: Mapping[str, Any], **context: Any):
        return np.full_like(image, predictions["frame"] * 10 + context.get("offset", 0))


def test_inferer_runs_transforms_model_post_process_and_draw(tmp_path: Path) -> None:
    images = []
    for i in range(2):
        images.append(tmp_path / f"in{i}.png")
        save_png(images[-1], np.zeros((6, 8, 3), np.uint8))

    def to_tensor(sample: dict, rng: Any) -> dict:
        return {**sample, "img": torch.as_tensor(sample["img"]).permute(2, 0, 1).float()}

    seen = []

    def model(batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        seen.append(tuple(batch["img"].shape))
        return {"out": batch["img"].mean()[None]}

    post_process = CountingPostProcess()
    inferer = FrameInferer([to_tensor], post_process)
    written = inferer.run(images, model, tmp_path / "out", offset=1)
    assert written == [tmp_path / "out" / "in0_frame.png", tmp_path / "out" / "in1_frame.png"]
    assert seen == [(1, 3, 6, 8)] * 2
    assert [int(cv2.imread(str(p))[0, 0, 0]) for p in written] == [11, 21]
    inferer(images[:1], model, tmp_path / "again")  # a new call is a new sequence
    assert post_process.resets == 2 and int(cv2.imread(str(tmp_path / "again" / "in0_frame.png"))[0, 0, 0]) == 10
