"""Synthetic CarFusion and its packer: the raw layout, crops, slot mapping, bad lines, flips."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from hat.data.dataset import decode_image
from hat.data.pack import PackReader
from hat.data.packer import run_pack
from hat.data.transforms import RandomFlip
from hat.errors import BadSourceRecord, UserError
from hat_keypoint.keypoints import FLIP_PAIRS, KEPT_SLOTS, NAMES, NUM_KEYPOINTS, SLOT_TO_INDEX
from hat_keypoint.packer import CarfusionPacker, _jpeg_size
from hat_keypoint.synth import CarModel, _Pose, camera_rotation, generate_carfusion

SMALL = {"num_sequences": 2, "frames_per_sequence": 4, "image_size": 160, "cars_per_frame": 2}


def all_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("synth") / "raw"
    generate_carfusion(dst, seed=3, **SMALL)
    return dst


# -- keypoint definitions ------------------------------------------------------------------
def test_slot_mapping_drops_exhaust_and_centre() -> None:
    assert NUM_KEYPOINTS == 12 == len(NAMES)
    assert SLOT_TO_INDEX[9] is None and SLOT_TO_INDEX[14] is None
    assert [SLOT_TO_INDEX[s] for s in (1, 8, 10, 13)] == [0, 7, 8, 11]
    assert sorted(i for i in SLOT_TO_INDEX.values() if i is not None) == list(range(12))
    for right, left in FLIP_PAIRS:  # every pair is (right x, left x) of the same part
        assert NAMES[right].startswith("right_") and NAMES[left] == "left_" + NAMES[right][len("right_") :]


# -- synth ---------------------------------------------------------------------------------
def test_synth_writes_the_raw_layout_with_parseable_annotations(synth_raw: Path) -> None:
    assert sorted(p.name for p in (synth_raw / "train").iterdir()) == ["car_train1", "car_train2"]
    assert sorted(p.name for p in (synth_raw / "test").iterdir()) == ["car_test1"]
    frames = sorted(synth_raw.glob("*/car_*/images_jpg/*.jpg"))
    assert len(frames) == 3 * SMALL["frames_per_sequence"]
    seen_visibility: set[int] = set()
    for frame in frames:
        seq = frame.parent.parent
        img = cv2.imread(str(frame))
        assert img.shape == (160, 160, 3)
        gt = [line.split(",") for line in (seq / "gt" / f"{frame.stem}.txt").read_text().splitlines()]
        bb = [line.split(",") for line in (seq / "bb" / f"{frame.stem}.txt").read_text().splitlines()]
        assert len(bb) == SMALL["cars_per_frame"] and len(gt) == 14 * len(bb)
        boxes = {int(f[4]): [int(v) for v in f[:4]] for f in bb}
        for fields in gt:
            assert len(fields) == 5
            x, y = float(fields[0]), float(fields[1])
            slot, instance, vis = int(fields[2]), int(fields[3]), int(fields[4])
            assert 1 <= slot <= 14 and instance in boxes and 0 <= vis <= 3
            seen_visibility.add(vis)
            x1, y1, x2, y2 = boxes[instance]
            assert 0 <= x1 < x2 <= 160 and 0 <= y1 < y2 <= 160
            if vis > 0 and 0 <= x < 160 and 0 <= y < 160:  # a labelled point in the frame lies in its car's box
                assert x1 - 1 <= x <= x2 + 1 and y1 - 1 <= y <= y2 + 1, (frame, fields, boxes[instance])
    assert {1, 2} <= seen_visibility  # far-side points are marked occluded


def test_synth_is_deterministic_per_seed(tmp_path: Path, synth_raw: Path) -> None:
    generate_carfusion(tmp_path / "same", seed=3, **SMALL)
    generate_carfusion(tmp_path / "other", seed=4, **SMALL)
    reference = all_files(synth_raw)
    assert all_files(tmp_path / "same") == reference
    other = all_files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert all(other[name] != reference[name] for name in reference if name.endswith(".jpg"))


def test_synth_refuses_to_mix_into_existing_data(tmp_path: Path) -> None:
    (tmp_path / "train" / "car_old").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists"):
        generate_carfusion(tmp_path, seed=0, num_sequences=1, frames_per_sequence=1)
    assert not (tmp_path / "test").exists() and not list(tmp_path.glob(".synth-*"))


def test_synth_geometry_is_a_real_car_so_mirroring_swaps_left_and_right() -> None:
    model = CarModel.random(np.random.default_rng(0))
    points, _ = model.slots()
    kept = points[[s - 1 for s in KEPT_SLOTS]]
    facing = _Pose(camera_rotation(-math.pi / 2, math.radians(20)), distance=10.0).project(kept)
    # A car facing the camera shows its right side on the image's left.
    assert facing[0, 0] < facing[1, 0] and facing[4, 0] < facing[5, 0]
    # The mirror image of a car at yaw a is a car at yaw pi - a with left and right swapped.
    swap = np.arange(NUM_KEYPOINTS)
    for right, left in FLIP_PAIRS:
        swap[right], swap[left] = left, right
    for yaw in np.linspace(0.1, 6.2, 7):
        seen = _Pose(camera_rotation(yaw, 0.3), distance=10.0).project(kept)
        mirrored_car = _Pose(camera_rotation(math.pi - yaw, 0.3), distance=10.0).project(kept)
        mirrored = seen * [-1, 1]  # mirror about the principal point
        np.testing.assert_allclose(mirrored_car[swap], mirrored, atol=1e-9)


# -- packer on hand-written data -----------------------------------------------------------
def write_frame(root: Path, stem: str, gt: list[str], bb: list[str], size: tuple[int, int] = (80, 100)) -> Path:
    """A frame of ``size`` (h, w) under ``root/train/car_hand`` whose pixel (y, x) encodes its position."""
    seq = root / "train" / "car_hand"
    for sub in ("images_jpg", "gt", "bb"):
        (seq / sub).mkdir(parents=True, exist_ok=True)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx * 2, yy * 3, np.full_like(xx, 128)], -1).astype(np.uint8)
    cv2.imwrite(str(seq / "images_jpg" / f"{stem}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (seq / "gt" / f"{stem}.txt").write_text("\n".join(gt) + "\n")
    (seq / "bb" / f"{stem}.txt").write_text("\n".join(bb) + "\n")
    return seq / "images_jpg" / f"{stem}.jpg"


HAND_GT = [
    "25.5,30.25,1,7,2",  # right front wheel: valid
    "40,45.5,2,7,1",  # left front wheel, occluded: still valid
    "33,33,9,7,2",  # exhaust: dropped
    "41,21,14,7,3",  # centre: dropped
    "50,12,5,7,0",  # right front light, not labelled: invalid
    "-3,20,10,7,2",  # right front roof, outside the image: invalid
    "75,20,13,7,2",  # left back roof, in the image but outside the crop: invalid
    "",  # blank lines are ignored
    "90,70,1,8,2",  # instance 8 (small box)
    "5,5,1,9,0",  # instance 9: no valid keypoint
]
HAND_BB = ["20,10,60,50,7", "85,60,95,75,8", "2,2,40,40,9"]


def test_packer_crops_and_shifts_keypoints_exactly(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, "1_00001", HAND_GT, HAND_BB)
    packer = CarfusionPacker(tmp_path, "train", margin=0.25, min_box_size=16)
    assert packer.records() == [frame]
    samples = list(packer.pack_record(frame))
    assert len(samples) == 1  # instance 8 too small, instance 9 without a valid keypoint
    sample = samples[0]
    # box 20..60 x 10..50 grown by 10 px each side -> crop x 10..70, y 0..60 (clamped at the top)
    assert sample["img_name"] == "car_hand/1_00001_7"
    assert sample["src"] == "train/car_hand/images_jpg/1_00001.jpg"
    assert sample["box"] == [20.0, 10.0, 60.0, 50.0]
    ldmk = sample["ldmk"]
    assert ldmk.dtype == np.float32 and ldmk.shape == (12, 3)
    expected = np.zeros((12, 3), np.float32)
    expected[0] = (15.5, 30.25, 1)
    expected[1] = (30, 45.5, 1)
    expected[4] = (40, 12, 0)
    expected[8] = (-13, 20, 0)
    expected[11] = (65, 20, 0)
    np.testing.assert_array_equal(ldmk, expected)
    crop = decode_image(sample["img"])
    assert crop.shape == (60, 60, 3)
    frame_img = cv2.imread(str(frame))
    assert np.abs(crop.astype(int) - frame_img[0:60, 10:70].astype(int)).mean() < 2  # the same pixels, re-encoded


def test_packer_accepts_four_value_boxes_numbered_by_line(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, "2_00000", ["30,30,1,2,2", "30,30,1,1,2"], ["0,0,20,20", "20.5,20,60,60.5"])
    samples = list(CarfusionPacker(tmp_path, "train", margin=0.0).pack_record(frame))
    assert [s["img_name"] for s in samples] == ["car_hand/2_00000_2"]  # instance 1 has no point in its box
    np.testing.assert_allclose(samples[0]["ldmk"][0], [10, 10, 1])  # crop origin floor(20.5), 20


@pytest.mark.parametrize(
    ("gt", "bb", "bad_file", "line", "reason"),
    [
        (["1,2,1,1,2", "1,2,3,4"], ["0,0,50,50,1"], "gt", 2, "expected 5 fields"),
        (["1,2,1,1,2", "", "1,abc,2,1,2"], ["0,0,50,50,1"], "gt", 3, "y 'abc' is not a number"),
        (["1,2,15,1,2"], ["0,0,50,50,1"], "gt", 1, "kp_id 15 is outside 1..14"),
        (["1,2,0,1,2"], ["0,0,50,50,1"], "gt", 1, "kp_id 0 is outside 1..14"),
        (["1,2,3,1,4"], ["0,0,50,50,1"], "gt", 1, "visibility 4 is outside 0..3"),
        (["1,2,3,1,1.5"], ["0,0,50,50,1"], "gt", 1, "not an integer"),
        (["1,2,3,1,2", "4,5,3,1,2"], ["0,0,50,50,1"], "gt", 2, "given twice"),
        (["1,2,3,1,2"], ["0,0,50,50,1", "40,0,30,50,2"], "bb", 2, "empty box"),
        (["1,2,3,1,2"], ["0,0,50"], "bb", 1, "expected 4 or 5 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(
    tmp_path: Path, gt: list[str], bb: list[str], bad_file: str, line: int, reason: str
) -> None:
    frame = write_frame(tmp_path, "1_00000", gt, bb)
    with pytest.raises(BadSourceRecord, match=reason) as info:
        list(CarfusionPacker(tmp_path, "train").pack_record(frame))
    path = frame.parent.parent / bad_file / "1_00000.txt"
    assert info.value.where == f"{path}:{line}"
    assert info.value.line == line


def test_missing_annotation_file_is_a_bad_record_on_the_image(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, "1_00000", ["1,2,3,1,2"], ["0,0,50,50,1"])
    # a missing box file is no longer an error (the box comes from the keypoints);
    # a missing keypoint file still is
    (frame.parent.parent / "gt" / "1_00000.txt").unlink()
    with pytest.raises(BadSourceRecord, match="keypoint file .* is missing") as info:
        list(CarfusionPacker(tmp_path, "train").pack_record(frame))
    assert info.value.where == str(frame)


def test_no_frames_is_a_user_error_showing_the_layout(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(UserError, match="no CarFusion frames") as info:
        run_pack(CarfusionPacker(tmp_path, "train"), tmp_path / "out")
    assert "images_jpg" in (info.value.hint or "")


def test_run_pack_skips_bad_frames_and_writes_simple_anno(tmp_path: Path) -> None:
    raw, dst = tmp_path / "raw", tmp_path / "packed"
    write_frame(raw, "1_00001", HAND_GT, HAND_BB)
    write_frame(raw, "1_00002", ["10,10,1,1,2", "oops"], ["0,0,50,50,1"])
    write_frame(raw, "1_00003", ["10,10,1,1,2", "30,30,6,2,2"], ["0,0,50,50,1", "20,20,60,60,2"])
    packer = CarfusionPacker(raw, "train", margin=0.25)
    with pytest.raises(BadSourceRecord):
        run_pack(packer, dst)
    assert not (dst / "train_lmdb").exists()
    summary = run_pack(packer, dst, skip_bad=True)
    assert (summary.num_records, summary.num_skipped, summary.num_samples) == (3, 1, 3)
    bad_gt = raw / "train" / "car_hand" / "gt" / "1_00002.txt"
    assert summary.skipped == [f"{bad_gt}:2: expected 5 fields x,y,kp_id,instance_id,visibility, got 1"]
    meta = PackReader(summary.path).meta
    assert meta["num_skipped"] == 1
    assert (meta["num_boxes"], meta["num_boxes_skipped_small"], meta["num_boxes_skipped_no_keypoints"]) == (5, 1, 1)
    assert meta["keypoint_names"] == list(NAMES)
    anno = json.loads((dst / "simple_anno" / "keypoints_train.json").read_text())
    assert list(anno) == ["car_hand/1_00001_7", "car_hand/1_00003_1", "car_hand/1_00003_2"]
    assert all(len(rows) == 12 and all(len(r) == 3 for r in rows) for rows in anno.values())
    assert anno["car_hand/1_00001_7"][0] == [15.5, 30.25, 1]
    assert anno["car_hand/1_00003_2"][5] == [20.0, 20.0, 1]  # (30, 30) - crop origin (20 - 10, 20 - 10)


def test_jpeg_header_size_matches_the_decoded_image(tmp_path: Path) -> None:
    frame = write_frame(tmp_path, "1_00000", [], [], size=(37, 53))
    assert _jpeg_size(frame) == (53, 37)
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg")
    assert _jpeg_size(tmp_path / "x.jpg") is None


# -- synth -> pack -------------------------------------------------------------------------
def test_synth_packs_one_sample_per_box(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    generate_carfusion(raw, seed=1, num_sequences=1, frames_per_sequence=6)
    for split in ("train", "test"):
        num_boxes = sum(len(p.read_text().splitlines()) for p in (raw / split).glob("car_*/bb/*.txt"))
        summary = run_pack(CarfusionPacker(raw, split), tmp_path / "packed", num_workers=0)
        reader = PackReader(summary.path)
        assert len(reader) == num_boxes == reader.meta["num_boxes"] == 12
        sample = reader[0]
        crop = decode_image(sample["img"])
        valid = sample["ldmk"][:, 2] > 0
        assert valid.sum() >= 6
        assert (sample["ldmk"][valid, 0] < crop.shape[1]).all() and (sample["ldmk"][valid, 1] < crop.shape[0]).all()
        assert (sample["ldmk"][valid, :2] >= 0).all()


def test_flip_moves_the_left_wheel_to_the_mirrored_right_wheel() -> None:
    img = np.zeros((60, 100, 3), np.uint8)
    img[:, :10] = 255  # a bright band on the left edge
    keypoints = np.zeros((12, 3), np.float32)
    keypoints[0] = (20.5, 50, 1)  # right front wheel
    keypoints[1] = (70.25, 45, 1)  # left front wheel
    keypoints[8] = (30, 10, 0)  # right front roof, invalid
    keypoints[9] = (60, 12, 1)  # left front roof
    out = RandomFlip(p=1.0, flip_pairs=FLIP_PAIRS)({"img": img, "keypoints": keypoints}, np.random.default_rng(0))
    flipped = out["keypoints"]
    np.testing.assert_allclose(flipped[1], [100 - 20.5, 50, 1])  # left wheel is where the right one was mirrored
    np.testing.assert_allclose(flipped[0], [100 - 70.25, 45, 1])
    np.testing.assert_allclose(flipped[9], [70, 10, 0])  # the flag travels with its point
    np.testing.assert_allclose(flipped[8], [40, 12, 1])
    assert out["img"][:, 90:].min() == 255 and out["img"][:, :90].max() == 0
    assert keypoints[0, 0] == 20.5  # input untouched
