"""The image inferer every task's ``hat infer`` builds on, and the one image reader and writer.

`hat infer TASK` runs the exported model on a user's image files. Reading a file,
applying the config's transforms, running the model, decoding with the task's
post-process and writing the picture are the same for every image task; only what
the sample carries besides the image (a camera matrix, say) and how the predictions
are drawn are the task's. Keeping the common part here means one error for an
unreadable input, one for an unwritable output, and the post-process contract
(:mod:`hat.postprocess`) applied the same way for every task.

A task's inferer subclasses :class:`ImageInferer` and implements :meth:`~ImageInferer.draw`
(and, if needed, :meth:`~ImageInferer.sample` / :meth:`~ImageInferer.batch`). Task options
(``hat infer fcos3d --calib FILE``) are keyword-only parameters with defaults of the
subclass's ``__call__``; the CLI parses them from that signature
(:mod:`hat.extra_options`), and ``__call__`` hands what they give to :meth:`~ImageInferer.run`
as keyword arguments that reach ``sample`` and ``draw``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat.errors import UserError
from hat.postprocess import PostProcessFn, Predictions, reset_post_process

#: ``model(batch) -> outputs``: the exported ONNX model (:class:`hat.engine.onnx_predictor.OnnxModel`)
#: or any callable with the same contract.
ModelFn = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class ImageFileError(UserError):
    """An image file that cannot be read, or a picture that cannot be written (exit 2)."""


def read_image(path: str | Path) -> np.ndarray:
    """The file as a BGR ``uint8`` image; :class:`ImageFileError` if it is not one."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ImageFileError(f"image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageFileError(f"cannot read image {path}", hint="pass a JPEG or PNG file")
    return image


def save_png(path: str | Path, img: np.ndarray) -> Path:
    """Write ``img`` (BGR or grayscale ``uint8``) as a PNG at ``path``; returns the path.

    The folder is created; the file is written to a temporary name and renamed into
    place, so an interrupted run never leaves a truncated picture. Any failure (an
    image that is not one, a folder that cannot be created or written) is an
    :class:`ImageFileError` naming the path.
    """
    import cv2

    from hat.deploy.files import atomic_write_bytes

    path = Path(path)
    array = np.asarray(img)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageFileError(
            f"cannot write {path}: expected an HxW or HxWx3 uint8 image, got {array.dtype} {array.shape}"
        )
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise ImageFileError(f"cannot encode an image of shape {array.shape} as PNG for {path}")
    try:
        atomic_write_bytes(path, data.tobytes())
    except OSError as exc:
        raise ImageFileError(
            f"cannot write {path}: {exc.strerror or exc}", hint="choose a --save-path you can write to"
        ) from exc
    return path


class ImageInferer:
    """Image files -> pictures of what the model found (see the module docstring).

    Args:
        transforms: the config's evaluation transforms, ``transform(sample, rng) -> sample``.
        post_process: the config's top-level ``post_process`` (the same object type the
            predictors decode with).

    Each input ``<stem>.<ext>`` is written as ``<save_path>/<stem>_<suffix>.png``.
    """

    #: The written picture's name is ``<input stem>_<suffix>.png``.
    suffix: str = "result"

    def __init__(self, transforms: Sequence[Callable[..., dict]], post_process: PostProcessFn) -> None:
        self.transforms = list(transforms)
        self.post_process = post_process

    def __call__(self, paths: Sequence[Path], model: ModelFn, save_path: Path) -> list[Path]:
        """Run on ``paths``; a task with options overrides this with keyword-only parameters."""
        return self.run(paths, model, save_path)

    def run(self, paths: Sequence[Path], model: ModelFn, save_path: Path, **context: Any) -> list[Path]:
        """Read, transform, run, decode, draw and save each file; returns the written paths.

        The files are one sequence: the post-process is reset once, before the first.
        ``context`` (what the task's options gave) reaches :meth:`sample` and :meth:`draw`.
        """
        reset_post_process(self.post_process)
        rng = np.random.default_rng(0)
        written = []
        for path in paths:
            image = read_image(path)
            sample = self.sample(image, **context)
            for transform in self.transforms:
                sample = transform(sample, rng)
            batch = self.batch(sample)
            with torch.no_grad():
                predictions = self.post_process(model(batch), batch)
            drawn = self.draw(image, sample, predictions, **context)
            written.append(save_png(Path(save_path) / f"{Path(path).stem}_{self.suffix}.png", drawn))
        return written

    def sample(self, image: np.ndarray, **context: Any) -> dict[str, Any]:
        """The sample the transforms start from (default: the BGR image alone)."""
        return {"img": image, "color_space": "bgr"}

    def batch(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        """The transformed sample as a batch of one (default: ``{"img": img[None]}``)."""
        return {"img": sample["img"][None]}

    def draw(
        self, image: np.ndarray, sample: Mapping[str, Any], predictions: Predictions, **context: Any
    ) -> np.ndarray:
        """The picture to save: ``predictions`` (of the batch of one) drawn on the original ``image``."""
        raise NotImplementedError(f"{type(self).__name__} must implement draw(image, sample, predictions)")
