"""Bad inputs of `hat pack`, `hat synth` and `hat infer` on CarFusion (issue 12, items 7, 8, 13, 20).

One table per command. Each row sets up what a user could have on disk (a JPEG cut
short, a file where a directory goes, a split that is not there, two pictures of one
name), runs the command as typed (in process, :func:`hat.testing.run_cli`), and checks
the exit code, that an error says what, where and what next without a traceback, and
what is left on disk. The raw data is `hat synth carfusion`'s, small enough to take a
fraction of a second.

`hat infer` needs an exported model; training one would take minutes, so the rows run
the real command, config, transforms, post-process and drawing with a fake model: a
callable with the exported model's contract (``{"heatmap": (B, 12, h, w)}``) put where
:func:`hat.usecases.infer.run_infer` builds the ONNX model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from hat.data.pack import PackReader
from hat.inferer import image_data_problem, output_stems, read_image
from hat.plugins import PluginHost
from hat.testing import run_cli

SYNTH = ["--num-sequences", "2", "--frames-per-sequence", "2", "--image-size", "96", "--cars-per-frame", "1"]
NUM_TRAIN_FRAMES = 4  # 2 sequences x 2 frames, one car each


@dataclass
class Ctx:
    """A user's session: raw data from `hat synth`, where packs and pictures go, a stray file."""

    tmp: Path
    monkeypatch: pytest.MonkeyPatch
    names: dict[str, str] = field(default_factory=dict)  # extra {placeholders}

    @property
    def raw(self) -> Path:
        return self.tmp / "raw"

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def work(self) -> Path:
        return self.tmp / "work"

    @property
    def file(self) -> Path:
        """A plain file a user passes where a directory goes."""
        return self.tmp / "a-file"

    @property
    def frame(self) -> Path:
        """The first training frame."""
        return self.raw / "train" / "car_train1" / "images_jpg" / "1_00000.jpg"

    def placeholders(self) -> dict[str, str]:
        paths = {n: str(getattr(self, n)) for n in ("tmp", "raw", "data", "out", "work", "file", "frame")}
        return {**paths, **self.names}


@dataclass(frozen=True)
class BadInput:
    """One row: a setup, the command line ({placeholders}), the exit code, what it says, what it leaves.

    ``says``: fragments of the output, all required; an error row (exit 2) must also say
    ``error:`` and ``next:``. ``leaves(ctx, output)`` checks the disk afterwards.
    """

    id: str
    setup: Callable[[Ctx], None]
    args: tuple[str, ...]
    code: int
    says: tuple[str, ...]
    leaves: Callable[[Ctx, str], None]


def run(ctx: Ctx, args: tuple[str, ...]) -> tuple[int, str]:
    names = ctx.placeholders()
    code, out, err = run_cli(*(a.format(**names) for a in args))
    return code, out + err


def check_row(ctx: Ctx, case: BadInput) -> None:
    case.setup(ctx)
    code, output = run(ctx, case.args)
    assert code == case.code, f"exit {code}:\n{output}"
    assert "Traceback" not in output, output
    if case.code == 2:
        assert "error:" in output and "next:" in output, output
    # rich wraps long lines, the list of skipped records even inside a path: compare without spaces
    flat = "".join(output.split())
    names = ctx.placeholders()
    for fragment in case.says:
        text = fragment.format(**names)
        assert "".join(text.split()) in flat, f"{text!r} not in:\n{output}"
    case.leaves(ctx, output)


@pytest.fixture()
def ctx(tmp_path: Path, keypoint_host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> Ctx:
    """`hat synth carfusion --dst raw` (small), and a stray file ``a-file``."""
    session = Ctx(tmp_path, monkeypatch)
    code, out, err = run_cli("synth", "carfusion", "--dst", str(session.raw), *SYNTH)
    assert code == 0, out + err
    session.file.write_text("not a folder\n")
    return session


# -- setups and checks --------------------------------------------------------------------------
def nothing(ctx: Ctx) -> None:
    return None


def truncate_frame(ctx: Ctx) -> None:
    """Cut the first frame short, past its headers: libjpeg still decodes it, half grey."""
    data = ctx.frame.read_bytes()
    ctx.frame.write_bytes(data[: len(data) * 2 // 3])


def pad_frame_with_zeros(ctx: Ctx) -> None:
    ctx.frame.write_bytes(ctx.frame.read_bytes() + b"\x00" * 64)


def remove_box_file(ctx: Ctx) -> None:
    (ctx.frame.parent.parent / "bb" / f"{ctx.frame.stem}.txt").unlink()


def file_untouched(ctx: Ctx, output: str) -> None:
    assert ctx.file.read_text() == "not a folder\n"


def no_pack(ctx: Ctx, output: str) -> None:
    """No pack of any split, nor a partial one."""
    assert not ctx.data.is_dir() or not [p for p in ctx.data.iterdir() if "lmdb" in p.name and "lock" not in p.name]
    file_untouched(ctx, output)


def pack_with(**meta: Any) -> Callable[[Ctx, str], None]:
    def leaves(ctx: Ctx, output: str) -> None:
        reader = PackReader(ctx.data / "train_lmdb")
        for key, value in meta.items():
            assert reader.meta[key] == value, (key, reader.meta)
        assert len(reader) == reader.meta["num_boxes"] - reader.meta["num_boxes_skipped_small"]

    return leaves


def raw_untouched_by_synth(ctx: Ctx, output: str) -> None:
    file_untouched(ctx, output)
    assert not list(ctx.tmp.rglob(".synth-*"))


# -- hat pack -------------------------------------------------------------------------------------
PACK = ("pack", "carfusion", "--src", "{raw}", "--dst", "{data}", "--split", "train")

BAD_PACK_INPUTS = [
    BadInput(
        "truncated-jpeg",
        truncate_frame,
        PACK,
        2,
        ("bad source record", "truncated JPEG", "FF D9", "where: {frame}", "--skip-bad"),
        no_pack,
    ),
    BadInput(
        "truncated-jpeg-skip-bad",
        truncate_frame,
        (*PACK, "--skip-bad"),
        0,
        ("skipped 1 bad record", "{frame}: truncated JPEG"),
        pack_with(num_records=NUM_TRAIN_FRAMES, num_skipped=1, num_boxes=NUM_TRAIN_FRAMES - 1),
    ),
    BadInput(
        "jpeg-with-zero-padding-is-whole",
        pad_frame_with_zeros,
        PACK,
        0,
        (f"from {NUM_TRAIN_FRAMES} records",),
        pack_with(num_skipped=0, num_boxes=NUM_TRAIN_FRAMES),
    ),
    BadInput(
        "no-box-file-boxes-from-keypoints",
        remove_box_file,
        PACK,
        0,
        (f"from {NUM_TRAIN_FRAMES} records",),
        pack_with(num_skipped=0, num_boxes=NUM_TRAIN_FRAMES, num_frames_boxes_from_keypoints=1),
    ),
    BadInput(
        "dst-is-a-file",
        nothing,
        ("pack", "carfusion", "--src", "{raw}", "--dst", "{file}", "--split", "train"),
        2,
        ("--dst {file} is a file, not a directory", "where: {file}", "pass a directory for --dst"),
        file_untouched,
    ),
    BadInput(
        "dst-below-a-file",
        nothing,
        ("pack", "carfusion", "--src", "{raw}", "--dst", "{file}/data", "--split", "train"),
        2,
        ("--dst {file}/data cannot be created: {file} is a file", "where: {file}", "next:"),
        file_untouched,
    ),
    BadInput(
        "src-is-a-file",
        nothing,
        ("pack", "carfusion", "--src", "{file}", "--dst", "{data}", "--split", "train"),
        2,
        ("--src {file} is a file, not a directory", "where: {file}", "pass a directory as --src"),
        no_pack,
    ),
    BadInput(
        "split-not-in-the-dataset",
        nothing,
        ("pack", "carfusion", "--src", "{raw}", "--dst", "{data}", "--split", "nope"),
        2,
        ("has no split 'nope'", "its splits: test, train", "where: {raw}", "--split test or --split train"),
        no_pack,
    ),
]


@pytest.mark.parametrize("case", BAD_PACK_INPUTS, ids=lambda c: c.id)
def test_hat_pack_carfusion_input(ctx: Ctx, case: BadInput) -> None:
    check_row(ctx, case)


def test_boxes_from_keypoints_enclose_them_with_the_documented_pad(ctx: Ctx) -> None:
    """The derived box is the labelled keypoints' box grown 10% a side, close to the annotated one."""
    from hat_keypoint.packer import KEYPOINT_BOX_PAD

    bb = ctx.frame.parent.parent / "bb" / f"{ctx.frame.stem}.txt"
    annotated = [float(v) for v in bb.read_text().split(",")[:4]]
    remove_box_file(ctx)
    code, output = run(ctx, PACK)
    assert code == 0, output
    reader = PackReader(ctx.data / "train_lmdb")
    derived = next(reader[i]["box"] for i in range(len(reader)) if reader[i]["src"].endswith("1_00000.jpg"))
    gt = ctx.frame.parent.parent / "gt" / f"{ctx.frame.stem}.txt"
    points = np.array([[float(v) for v in line.split(",")] for line in gt.read_text().splitlines()])
    points = points[(points[:, 4] > 0) & (points[:, 0] >= 0) & (points[:, 0] < 96) & (points[:, 1] >= 0)]
    points = points[points[:, 1] < 96]
    x1, y1 = points[:, :2].min(axis=0)
    x2, y2 = points[:, :2].max(axis=0)
    pad = KEYPOINT_BOX_PAD * np.array([x2 - x1, y2 - y1])
    expected = [max(0, x1 - pad[0]), max(0, y1 - pad[1]), min(96, x2 + pad[0]), min(96, y2 + pad[1])]
    np.testing.assert_allclose(derived, expected, atol=1e-3)
    assert np.abs(np.array(derived) - annotated).max() < 0.25 * (annotated[2] - annotated[0])


# -- hat synth ------------------------------------------------------------------------------------
BAD_SYNTH_INPUTS = [
    BadInput(
        "dst-is-a-file",
        nothing,
        ("synth", "carfusion", "--dst", "{file}", *SYNTH),
        2,
        ("--dst {file} is a file, not a directory", "where: {file}", "pass a directory for --dst"),
        raw_untouched_by_synth,
    ),
    BadInput(
        "dst-below-a-file",
        nothing,
        ("synth", "carfusion", "--dst", "{file}/raw", *SYNTH),
        2,
        ("--dst {file}/raw cannot be created: {file} is a file", "where: {file}", "move the file"),
        raw_untouched_by_synth,
    ),
]


@pytest.mark.parametrize("case", BAD_SYNTH_INPUTS, ids=lambda c: c.id)
def test_hat_synth_carfusion_input(ctx: Ctx, case: BadInput) -> None:
    check_row(ctx, case)


# -- hat infer ------------------------------------------------------------------------------------
class FakeKeypointModel:
    """The exported model's contract, ``model(batch) -> {"heatmap": (B, 12, H/4, W/4)}``: one peak per map."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        self.path = path

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        img = torch.as_tensor(batch["img"])
        heatmap = torch.zeros(img.shape[0], 12, img.shape[2] // 4, img.shape[3] // 4)
        heatmap[:, :, heatmap.shape[2] // 2, heatmap.shape[3] // 2] = 1.0
        return {"heatmap": heatmap}


@pytest.fixture()
def infer_ctx(ctx: Ctx) -> Ctx:
    """An exported model in ``work/export`` (a fake one: see the module docstring)."""
    from hat import workdir
    from hat.deploy import files
    from hat.engine import onnx_predictor

    model = workdir.export_dir(ctx.work) / workdir.EXPORTED_MODEL
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    ctx.monkeypatch.setattr(onnx_predictor, "OnnxModel", FakeKeypointModel)
    # run_infer may check the model against export.json; the fake has none to check
    ctx.monkeypatch.setattr(files, "verified_export", lambda *a, **k: {}, raising=False)
    return ctx


INFER = ("infer", "keypoint", "--work-dir", "{work}", "--save-path", "{out}")


def two_of_one_name(ctx: Ctx) -> None:
    for folder in ("a", "b"):
        (ctx.tmp / folder).mkdir()
        shutil.copy(ctx.frame, ctx.tmp / folder / "crop.jpg")


def folder_of_pictures(ctx: Ctx) -> None:
    pictures = ctx.tmp / "pictures"
    pictures.mkdir()
    for name in ("b.jpg", "a.PNG", "c.jpeg"):
        img = read_image(ctx.frame)
        cv2.imwrite(str(pictures / name), img)
    (pictures / "notes.txt").write_text("not a picture")
    (pictures / "nested").mkdir()
    shutil.copy(ctx.frame, pictures / "nested" / "d.jpg")


def empty_folder(ctx: Ctx) -> None:
    (ctx.tmp / "empty").mkdir()
    (ctx.tmp / "empty" / "notes.txt").write_text("no pictures here")


def pictures(*names: str) -> Callable[[Ctx, str], None]:
    """Exactly these pictures in --save-path, printed in this order, each readable."""

    def leaves(ctx: Ctx, output: str) -> None:
        assert sorted(p.name for p in ctx.out.iterdir()) == sorted(names)
        printed = [line.strip() for line in output.splitlines() if line.strip().endswith(".png")]
        assert printed == [str(ctx.out / n) for n in names], output
        assert all(cv2.imread(str(ctx.out / n)) is not None for n in names)

    return leaves


def no_pictures(ctx: Ctx, output: str) -> None:
    assert not ctx.out.exists() or not list(ctx.out.iterdir())
    file_untouched(ctx, output)


BAD_INFER_INPUTS = [
    BadInput(
        "same-name-in-two-folders",
        two_of_one_name,
        (*INFER, "--input", "{tmp}/a/crop.jpg", "--input", "{tmp}/b/crop.jpg"),
        0,
        ("a_crop_keypoints.png", "b_crop_keypoints.png"),
        pictures("a_crop_keypoints.png", "b_crop_keypoints.png"),
    ),
    BadInput(
        "truncated-jpeg",
        truncate_frame,
        (*INFER, "--input", "{frame}"),
        2,
        ("cannot read image {frame}: truncated JPEG", "FF D9", "where: {frame}", "copy it again"),
        no_pictures,
    ),
    BadInput(
        "input-is-a-directory",
        folder_of_pictures,
        (*INFER, "--input", "{tmp}/pictures"),
        0,
        (),
        pictures("a_keypoints.png", "b_keypoints.png", "c_keypoints.png"),
    ),
    BadInput(
        "input-directory-without-pictures",
        empty_folder,
        (*INFER, "--input", "{tmp}/empty"),
        2,
        ("--input {tmp}/empty is a directory with no image files", ".jpg", "where: {tmp}/empty", "next:"),
        no_pictures,
    ),
    BadInput(
        "input-not-found",
        nothing,
        (*INFER, "--input", "{tmp}/missing.jpg"),
        2,
        ("input file(s) not found: {tmp}/missing.jpg", "a directory of them"),
        no_pictures,
    ),
    BadInput(
        "save-path-is-a-file",
        nothing,
        ("infer", "keypoint", "--work-dir", "{work}", "--save-path", "{file}", "--input", "{frame}"),
        2,
        ("--save-path {file} is a file, not a directory", "where: {file}", "pass a directory for --save-path"),
        no_pictures,
    ),
    BadInput(
        "save-path-below-a-file",
        nothing,
        ("infer", "keypoint", "--work-dir", "{work}", "--save-path", "{file}/out", "--input", "{frame}"),
        2,
        ("--save-path {file}/out cannot be created: {file} is a file", "where: {file}", "next:"),
        no_pictures,
    ),
]


@pytest.mark.parametrize("case", BAD_INFER_INPUTS, ids=lambda c: c.id)
def test_hat_infer_keypoint_input(infer_ctx: Ctx, case: BadInput) -> None:
    check_row(infer_ctx, case)


def test_infer_help_says_a_directory_is_taken(keypoint_host: PluginHost) -> None:
    code, out, err = run_cli("infer", "--help")
    assert code == 0
    flat = "".join(out.replace("│", " ").split())  # the help is wrapped inside a box
    assert "oradirectory:itsimagefiles" in flat and "sortedbyname" in flat


# -- the pieces the rows rely on ----------------------------------------------------------------
def test_output_stems_are_distinct_and_stable() -> None:
    paths = [Path("x/a/img.jpg"), Path("x/b/img.jpg"), Path("c.jpg"), Path("y/a/img.png"), Path("x/b/IMG.png")]
    stems = output_stems(paths)
    assert stems == ["a_img", "b_img", "c", "a_img_2", "b_IMG_2"]
    assert output_stems(paths) == stems  # the same inputs give the same names
    assert len({s.casefold() for s in stems}) == len(paths)
    assert output_stems([Path("d/one.jpg"), Path("d/two.jpg")]) == ["one", "two"]  # unique stems unchanged


def test_truncation_check_allows_zero_padding_only() -> None:
    ok, jpg = cv2.imencode(".jpg", np.full((32, 32, 3), 90, np.uint8))
    data = jpg.tobytes()
    assert image_data_problem(data, data) is None
    assert image_data_problem(data, data + b"\x00" * 100) is None
    assert "truncated JPEG" in (image_data_problem(data, data[:-2]) or "")
    ok, png = cv2.imencode(".png", np.zeros((8, 8), np.uint8))
    assert image_data_problem(png.tobytes(), png.tobytes()) is None
    assert "truncated PNG" in (image_data_problem(png.tobytes(), png.tobytes()[:-12]) or "")
