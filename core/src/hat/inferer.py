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

from collections import Counter
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
    """An image file that cannot be read, or a picture that cannot be written (exit 2).

    ``reason`` is the problem without the path (a packer names the file itself, as a
    :class:`~hat.errors.BadSourceRecord`); ``path`` is the file concerned.
    """

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        reason: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.reason = reason or message
        self.path = None if path is None else Path(path)


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_START, _PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
#: How much of a file's end :func:`image_file_problem` reads (enough for any zero padding seen in practice).
_TAIL_BYTES = 1 << 16
_CUT_SHORT_HINT = "the file was cut short (an interrupted copy or download?): copy it again"


#: What ``hat infer --input DIR`` takes from a directory: the formats every OpenCV build reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def image_files(directory: str | Path) -> list[Path]:
    """The image files directly in ``directory`` (by :data:`IMAGE_SUFFIXES`, any case), sorted by name.

    Sub-directories are not entered and hidden files (``.name``) are left out, so a
    folder of pictures gives those pictures and nothing a tool left beside them.
    """
    return sorted(
        p
        for p in Path(directory).iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def image_data_problem(head: bytes, tail: bytes) -> str | None:
    """Why an encoded image with this start and end is incomplete, or None.

    A JPEG cut short still decodes: libjpeg fills the missing rows with grey and only
    warns "Premature end of JPEG file" on stderr, naming no file, so a decode alone
    would take it for an image. A complete JPEG ends with the end-of-image marker
    ``FF D9``; trailing zero bytes (padding some writers and file systems add) are
    allowed, anything else after the marker is not (a file cut short cannot be told
    from one with a trailer). A PNG ends with its ``IEND`` chunk. Other formats are
    left to the decoder.
    """
    end = tail.rstrip(b"\x00")
    if head.startswith(_JPEG_START) and not end.endswith(_JPEG_END):
        return "truncated JPEG: the file does not end with the end-of-image marker FF D9"
    if head.startswith(_PNG_START) and not end.endswith(_PNG_END):
        return "truncated PNG: the file does not end with its IEND chunk"
    return None


def image_file_problem(path: str | Path) -> str | None:
    """:func:`image_data_problem` of a file, reading only its first bytes and its end.

    For a caller that must not decode (the CarFusion packer's count of boxes reads
    frame sizes from the JPEG header). A file that cannot be opened is left to the
    reader that decodes it.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(len(_PNG_START))
            size = f.seek(0, 2)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
            if not tail.rstrip(b"\x00") and size > _TAIL_BYTES:  # all padding: look at the whole file
                f.seek(0)
                tail = f.read()
    except OSError:
        return None
    return image_data_problem(head, tail)


def read_image(path: str | Path) -> np.ndarray:
    """The file as a BGR ``uint8`` image; :class:`ImageFileError` if it is not one.

    The one image reader of ``hat infer`` and the packers: a missing file, one that
    cannot be read, a truncated JPEG or PNG (:func:`image_data_problem`, checked
    before decoding) and one that does not decode are each an :class:`ImageFileError`
    naming the file, with the reason alone in ``reason``.
    """
    import cv2

    path = Path(path)
    if path.is_dir():
        raise ImageFileError(
            f"{path} is a directory, not an image file", reason="a directory, not an image file", path=path
        )
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageFileError(f"image file not found: {path}", reason="the image file is missing", path=path) from None
    except OSError as exc:
        reason = f"cannot read the image: {exc.strerror or exc}"
        raise ImageFileError(f"cannot read image {path}: {exc.strerror or exc}", reason=reason, path=path) from None
    tail = data[-_TAIL_BYTES:]
    problem = image_data_problem(data[: len(_PNG_START)], tail if tail.rstrip(b"\x00") else data)
    if problem is not None:
        raise ImageFileError(
            f"cannot read image {path}: {problem}", where=str(path), hint=_CUT_SHORT_HINT, reason=problem, path=path
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ImageFileError(
            f"cannot read image {path}",
            hint="pass a JPEG or PNG file",
            reason="image cannot be read or decoded",
            path=path,
        )
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


def output_stems(paths: Sequence[str | Path]) -> list[str]:
    """One distinct name per input, for its picture: the input's stem where no other input has it.

    Inputs of one run that share a stem (``a/img.jpg`` and ``b/img.jpg``) are written
    into one folder, so the stem alone would write one picture over the other. Those
    get their folder's name in front (``a_img``, ``b_img``): readable, and the same
    name in every run given the same inputs. What is still equal after that (the same
    folder name in two places, ``img.jpg`` beside ``img.png``, one file given twice)
    gets a counter, ``_2``, ``_3``, ..., in the order given; the first keeps the plain
    name. Names are compared case-insensitively, as a case-insensitive file system would.
    """
    stems = [Path(p).stem for p in paths]
    counts = Counter(s.casefold() for s in stems)
    shared = {s for s, n in counts.items() if n > 1}
    chosen: list[str] = []
    used: set[str] = set()
    for path, stem in zip(paths, stems, strict=True):
        name = f"{Path(path).absolute().parent.name}_{stem}" if stem.casefold() in shared else stem
        candidate, count = name, 1
        while candidate.casefold() in used:
            count += 1
            candidate = f"{name}_{count}"
        used.add(candidate.casefold())
        chosen.append(candidate)
    return chosen


class ImageInferer:
    """Image files -> pictures of what the model found (see the module docstring).

    Args:
        transforms: the config's evaluation transforms, ``transform(sample, rng) -> sample``.
        post_process: the config's top-level ``post_process`` (the same object type the
            predictors decode with).

    Each input ``<stem>.<ext>`` is written as ``<save_path>/<stem>_<suffix>.png``; inputs
    that share a stem are told apart by their folder's name (:func:`output_stems`).
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
        for path, stem in zip(paths, output_stems(paths), strict=True):
            image = read_image(path)
            sample = self.sample(image, **context)
            for transform in self.transforms:
                sample = transform(sample, rng)
            batch = self.batch(sample)
            with torch.no_grad():
                predictions = self.post_process(model(batch), batch)
            drawn = self.draw(image, sample, predictions, **context)
            written.append(save_png(Path(save_path) / f"{stem}_{self.suffix}.png", drawn))
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
