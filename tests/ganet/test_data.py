"""hat-ganet's data side: synthetic CULane, the packer, the dataset and the lane transforms."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from hat.data.pack import PackReader
from hat.data.packer import run_pack
from hat.data.transforms import Normalize, ToTensor
from hat.errors import BadSourceRecord, UserError
from hat_ganet.dataset import CulanePackData
from hat_ganet.packer import CulanePacker, read_lanes
from hat_ganet.synth import CATEGORIES, HEIGHT, ROW_STEP, WIDTH, generate_culane, split_list_name
from hat_ganet.transforms import (
    HueSaturationValue,
    JPEGCompress,
    LaneFixedCrop,
    LaneRandomFlip,
    LaneRandomResizedCrop,
    LaneResize,
    LaneShiftScaleRotate,
    MeanBlur,
    MedianBlur,
    OneOf,
    RandomBrightnessContrast,
    RGBShift,
    map_points,
)

SMALL = {"num_drivers": 1, "videos_per_driver": 2, "frames_per_video": 7}  # 9 test, 1 val, 4 train frames


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("culane") / "raw"
    generate_culane(dst, seed=5, **SMALL)
    return dst


def list_paths(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


# -- synth -----------------------------------------------------------------------------------
def test_synth_writes_culane_layout_with_every_category_populated(raw: Path) -> None:
    frames = sorted(raw.glob("driver_*/*.MP4/*.jpg"))
    assert len(frames) == 14
    for frame in frames:
        assert frame.with_name(f"{frame.stem}.lines.txt").is_file()
    assert cv2.imread(str(frames[0])).shape == (HEIGHT, WIDTH, 3)
    splits = {name: list_paths(raw / "list" / f"{name}.txt") for name in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [4, 1, 9]
    assert all(p.startswith("/") for paths in splits.values() for p in paths)  # as CULane's lists
    listed = {p.lstrip("/") for paths in splits.values() for p in paths}
    assert listed == {f.relative_to(raw).as_posix() for f in frames}
    gt = (raw / "list" / "train_gt.txt").read_text().splitlines()
    assert [line.split()[0] for line in gt] == splits["train"] and all(len(line.split()) == 6 for line in gt)
    by_category = {}
    for k, category in enumerate(CATEGORIES):
        paths = list_paths(raw / "list" / "test_split" / split_list_name(k))
        assert paths, f"no {category} frame"
        assert not any(p.startswith("/") for p in paths)
        by_category[category] = paths
    assert sorted(p for paths in by_category.values() for p in paths) == sorted(p.lstrip("/") for p in splits["test"])
    for rel in by_category["cross"]:  # crossroads have no lanes
        assert read_lanes(raw / rel.replace(".jpg", ".lines.txt")) == []
    for rel in by_category["normal"] + by_category["curve"]:
        assert len(read_lanes(raw / rel.replace(".jpg", ".lines.txt"))) >= 2


def test_lines_are_sampled_every_10_px_bottom_up_inside_the_image(raw: Path) -> None:
    num_lanes = 0
    for path in raw.glob("driver_*/*.MP4/*.lines.txt"):
        for lane in read_lanes(path):
            xs, ys = np.array(lane[0::2]), np.array(lane[1::2])
            assert len(ys) >= 2 and np.all(np.diff(ys) == -ROW_STEP)  # bottom-up, every 10 px
            assert ys[0] <= HEIGHT and ys[0] % ROW_STEP == HEIGHT % ROW_STEP
            assert np.all((xs >= 0) & (xs < WIDTH))
            num_lanes += 1
    assert num_lanes >= 14


def test_synth_is_deterministic_and_refuses_a_used_dst(tmp_path: Path) -> None:
    tiny = {"num_drivers": 1, "videos_per_driver": 1, "frames_per_video": 11}
    generate_culane(tmp_path / "a", seed=2, **tiny)
    generate_culane(tmp_path / "b", seed=2, **tiny)
    files_a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    files_b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert files_a == files_b
    with pytest.raises(UserError, match="already holds CULane"):
        generate_culane(tmp_path / "a", seed=2, **tiny)
    with pytest.raises(UserError, match="at least 11 frames"):
        generate_culane(tmp_path / "c", seed=2, num_drivers=1, videos_per_driver=1, frames_per_video=5)


# -- packer ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def packed(raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("packed")
    for split in ("train", "test"):
        run_pack(CulanePacker(raw, split), dst)
    return dst


def test_pack_keeps_lanes_exactly_with_categories(raw: Path, packed: Path) -> None:
    reader = PackReader(packed / "test_lmdb")
    categories = {}
    for k, category in enumerate(CATEGORIES):
        for rel in list_paths(raw / "list" / "test_split" / split_list_name(k)):
            categories[rel] = [category]
    files = [p.lstrip("/") for p in list_paths(raw / "list" / "test.txt")]
    assert [reader[i]["file"] for i in range(len(reader))] == files
    for i in range(len(reader)):
        sample = reader[i]
        label = (raw / sample["file"]).with_name(Path(sample["file"]).stem + ".lines.txt")
        expected = [[float(v) for v in line.split()] for line in label.read_text().splitlines() if line.strip()]
        assert sample["lanes"] == expected  # exact floats, file order
        assert sample["categories"] == categories[sample["file"]]
        assert sample["image"] == (raw / sample["file"]).read_bytes()
    assert reader.meta["category_counts"] == {c: 1 for c in CATEGORIES}
    train = PackReader(packed / "train_lmdb")
    assert len(train) == 4 and all(train[i]["categories"] == [] for i in range(len(train)))


def copy_raw(raw: Path, dst: Path) -> Path:
    shutil.copytree(raw, dst)
    return dst


def test_list_paths_with_or_without_a_leading_slash(raw: Path, tmp_path: Path) -> None:
    src = copy_raw(raw, tmp_path / "raw")
    paths = list_paths(src / "list" / "train.txt")
    mixed = [p if i % 2 else p.lstrip("/") for i, p in enumerate(paths)]
    (src / "list" / "train.txt").write_text("\n".join(mixed) + "\n\n")
    summary = run_pack(CulanePacker(src, "train"), tmp_path / "packed")
    reader = PackReader(summary.path)
    assert [reader[i]["file"] for i in range(len(reader))] == [p.lstrip("/") for p in paths]


def test_malformed_line_and_missing_files_are_bad_records_naming_file_and_line(raw: Path, tmp_path: Path) -> None:
    src = copy_raw(raw, tmp_path / "raw")
    paths = [p.lstrip("/") for p in list_paths(src / "list" / "train.txt")]
    label = src / paths[1].replace(".jpg", ".lines.txt")
    label.write_text("1.0 590 2.0 580\n3.0 590 oops 580\n")
    with pytest.raises(BadSourceRecord) as err:
        run_pack(CulanePacker(src, "train"), tmp_path / "p1")
    assert (err.value.file, err.value.line) == (str(label), 2) and "'oops'" in err.value.reason
    label.write_text("1.0 590 2.0\n")
    with pytest.raises(BadSourceRecord) as err:
        run_pack(CulanePacker(src, "train"), tmp_path / "p2")
    assert (err.value.file, err.value.line) == (str(label), 1)
    label.unlink()
    (src / paths[2]).unlink()
    with pytest.raises(BadSourceRecord) as err:
        run_pack(CulanePacker(src, "train"), tmp_path / "p3")
    assert (err.value.file, err.value.line) == (str(src / "list" / "train.txt"), 2) and "lane file" in err.value.reason
    summary = run_pack(CulanePacker(src, "train"), tmp_path / "p4", skip_bad=True)
    assert summary.num_skipped == 2 and summary.num_samples == 2
    assert any(
        s.startswith(f"{src / 'list' / 'train.txt'}:3: the image {paths[2]} is missing") for s in summary.skipped
    )


def test_unknown_split_lists_the_available_ones(raw: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="its lists: test, train, val"):
        run_pack(CulanePacker(raw, "tset"), tmp_path)


# -- dataset ---------------------------------------------------------------------------------
def test_dataset_item_and_validation_img2orig(packed: Path) -> None:
    ds = CulanePackData(str(packed / "test_lmdb"))
    item = ds[0]
    assert item["img"].shape == (HEIGHT, WIDTH, 3) and item["img"].dtype == np.uint8
    assert item["ori_shape"] == (HEIGHT, WIDTH) and item["categories"] and item["file"].endswith(".jpg")
    assert np.array_equal(item["img2orig"], np.eye(3, dtype=np.float32))
    assert all(lane.dtype == np.float32 and lane.shape[1] == 2 for lane in item["lanes"])
    val = CulanePackData(
        str(packed / "test_lmdb"), [LaneFixedCrop(), LaneResize(), ToTensor(to_yuv=True), Normalize(128.0, 128.0)]
    )
    out = next(val[i] for i in range(len(val)) if val[i]["lanes_orig"])
    assert out["img"].shape == (3, 320, 800) and out["img"].dtype == torch.float32
    expected = np.array([[1640 / 800, 0, 0], [0, 1, 270], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(out["img2orig"], expected, rtol=1e-6)
    assert_maps_back(out["lanes"], out["img2orig"], out["lanes_orig"])


# -- geometric transforms ----------------------------------------------------------------------
def assert_maps_back(lanes: list[np.ndarray], img2orig: np.ndarray, originals: list[np.ndarray]) -> None:
    """Every transformed point, mapped through img2orig, is a point of an original lane."""
    points = np.concatenate(originals) if originals else np.zeros((0, 2))
    for lane in lanes:
        back = map_points(lane, np.asarray(img2orig, np.float64))
        dist = np.linalg.norm(back[:, None, :] - points[None], axis=2).min(axis=1)
        assert dist.max() < 1e-2, dist.max()


def draw(lane: np.ndarray, shape: tuple[int, int], thickness: int) -> np.ndarray:
    """The lane as a polyline in a black image (continuous coordinates: pixel centres at i + 0.5)."""
    img = np.zeros(shape, np.uint8)
    pts = np.round((lane - 0.5) * 16).astype(np.int32)
    cv2.polylines(img, [pts], False, 255, thickness, cv2.LINE_AA, shift=4)
    return img


def centre_errors(img: np.ndarray, lanes: list[np.ndarray], half: int = 7) -> np.ndarray:
    """|drawn line's intensity centroid - lane's x| on each image row a lane crosses, in pixels.

    Sub-pixel: a transform off by half a pixel (OpenCV's pixel-centre convention) shows.
    Rows where another lane or the border is within the window are left out.
    """
    h, w = img.shape
    errors = []
    for i, lane in enumerate(lanes):
        order = np.argsort(lane[:, 1])
        ys, xs = lane[order, 1], lane[order, 0]
        for row in range(int(np.ceil(ys[0])), int(np.floor(ys[-1]))):
            x = float(np.interp(row + 0.5, ys, xs))
            lo, hi = int(np.floor(x)) - half, int(np.floor(x)) + half + 1
            others = [np.interp(row + 0.5, *o[np.argsort(o[:, 1])][:, ::-1].T) for j, o in enumerate(lanes) if j != i]
            if lo < 0 or hi > w or any(abs(x - o) < 3 * half for o in others):
                continue
            weights = img[row, lo:hi]
            if weights.sum() < 255:
                continue
            centroid = float((weights * (np.arange(lo, hi) + 0.5)).sum() / weights.sum())
            errors.append(abs(centroid - x))
    return np.array(errors)


def make_sample(h: int = 160, w: int = 400) -> dict:
    ys = np.arange(h, 10, -2, dtype=np.float32)
    lane = np.stack([0.6 * w - 0.9 * (h - ys) + 0.004 * (h - ys) ** 2, ys], axis=1).astype(np.float32)
    lane2 = np.stack([w - 20 - 0.3 * (h - ys), ys], axis=1).astype(np.float32)
    img = cv2.merge([np.maximum(draw(lane, (h, w), 3), draw(lane2, (h, w), 3))] * 3)
    lanes = [lane, lane2]
    return {
        "img": img,
        "lanes": lanes,
        "lanes_orig": [x.copy() for x in lanes],
        "img2orig": np.eye(3, dtype=np.float32),
    }


GEOMETRIC = [
    LaneFixedCrop((30, 40, 300, 100)),
    LaneFixedCrop((-20, 100, 300, 100)),  # reaches past the image: black fill
    LaneResize((80, 240)),
    LaneRandomFlip(p=1.0),
    LaneShiftScaleRotate(p=1.0),
    LaneRandomResizedCrop(p=1.0),
    LaneRandomResizedCrop(size=(64, 160), p=1.0),
]


@pytest.mark.parametrize("transform", GEOMETRIC, ids=repr)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_transforms_move_lanes_exactly_like_the_image(transform, seed: int) -> None:
    sample = make_sample()
    before = {k: (v.copy() if isinstance(v, np.ndarray) else [x.copy() for x in v]) for k, v in sample.items()}
    out = transform(sample, np.random.default_rng(seed))
    for key, value in before.items():  # the input is not written to
        assert all(np.array_equal(a, b) for a, b in zip(np.atleast_1d(value), np.atleast_1d(sample[key]), strict=True))
    h, w = out["img"].shape[:2]
    drawn = out["img"][:, :, 0] > 100
    assert out["lanes"], "both lanes left the image"
    lane_mask = np.zeros((h, w), np.uint8)
    for lane in out["lanes"]:
        assert np.all((lane[:, 0] >= 0) & (lane[:, 0] <= w) & (lane[:, 1] >= 0) & (lane[:, 1] <= h))
        lane_mask = np.maximum(lane_mask, draw(lane, (h, w), 1))
    to_lane = cv2.distanceTransform((lane_mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
    to_drawn = cv2.distanceTransform((~drawn).astype(np.uint8), cv2.DIST_L2, 5)
    stretch = max(1.0, float(np.abs(np.linalg.inv(out["img2orig"].astype(np.float64))[:2, :2]).sum(axis=1).max()))
    tol = 2.0 * stretch + 1.5
    assert to_lane[drawn].max() <= tol  # every drawn pixel lies on a transformed lane...
    for lane in out["lanes"]:  # ...and every transformed point away from the border on drawn pixels
        cols, rows = np.floor(lane[:, 0]).astype(int), np.floor(lane[:, 1]).astype(int)
        inner = (cols >= 2) & (cols < w - 2) & (rows >= 2) & (rows < h - 2)
        assert to_drawn[rows[inner], cols[inner]].max() <= 1.5
    errors = centre_errors(out["img"][:, :, 0].astype(np.float64), out["lanes"])
    assert len(errors) > 20 and np.median(errors) < 0.15 and errors.max() < 0.8, (np.median(errors), errors.max())
    assert_maps_back(out["lanes"], out["img2orig"], out["lanes_orig"])
    assert all(np.array_equal(a, b) for a, b in zip(out["lanes_orig"], before["lanes_orig"], strict=True))


def test_lanes_leaving_the_image_are_clipped() -> None:
    sample = make_sample()
    sample["lanes"] = [
        np.array([[10, 150], [20, 100], [30, 50]], np.float32),
        np.array([[390, 150], [395, 60]], np.float32),
    ]
    out = LaneFixedCrop((0, 70, 400, 90))(sample, np.random.default_rng(0))
    assert len(out["lanes"]) == 1  # the second lane keeps one point: dropped
    np.testing.assert_array_equal(out["lanes"][0], [[10, 80], [20, 30]])


def test_a_pipeline_keeps_img2orig_consistent() -> None:
    pipeline = [
        LaneFixedCrop((0, 20, 400, 140)),
        LaneRandomFlip(p=1.0),
        LaneResize((80, 200)),
        LaneShiftScaleRotate(p=1.0),
        LaneRandomResizedCrop(p=1.0),
    ]
    for seed in range(5):
        sample, rng = make_sample(), np.random.default_rng(seed)
        for t in pipeline:
            sample = t(sample, rng)
        assert sample["img"].shape[:2] == (80, 200)
        assert_maps_back(sample["lanes"], sample["img2orig"], sample["lanes_orig"])


# -- photometric transforms --------------------------------------------------------------------
PHOTOMETRIC = [
    RGBShift(p=1.0),
    HueSaturationValue(p=1.0),
    JPEGCompress(p=1.0),
    MeanBlur(p=1.0),
    MedianBlur(p=1.0),
    RandomBrightnessContrast(p=1.0),
    OneOf([RGBShift(), HueSaturationValue()], p=1.0),
]


@pytest.mark.parametrize("transform", PHOTOMETRIC, ids=repr)
def test_photometric_transforms_change_only_pixels_reproducibly(transform) -> None:
    rng = np.random.default_rng(0)
    sample = make_sample()
    sample["img"] = np.clip(sample["img"].astype(np.int16) + rng.integers(0, 80, sample["img"].shape), 0, 255).astype(
        np.uint8
    )
    a = transform(sample, np.random.default_rng(3))
    b = transform(sample, np.random.default_rng(3))
    assert a["img"].shape == sample["img"].shape and a["img"].dtype == np.uint8
    assert np.array_equal(a["img"], b["img"]) and not np.array_equal(a["img"], sample["img"])
    assert a["lanes"] is sample["lanes"] and a["img2orig"] is sample["img2orig"]
    skipped = type(transform)(**{**{k: getattr(transform, k) for k in transform._repr_fields}, "p": 0.0})
    assert np.array_equal(skipped(sample, np.random.default_rng(3))["img"], sample["img"])


def test_the_recipe_pipeline_on_a_synthetic_frame(packed: Path) -> None:
    train = [
        LaneFixedCrop(),
        LaneRandomFlip(p=0.5),
        LaneResize((320, 800)),
        OneOf([RGBShift(), HueSaturationValue()], p=0.7),
        JPEGCompress(p=0.2),
        OneOf([MeanBlur(), MedianBlur()], p=0.2),
        RandomBrightnessContrast(p=0.5),
        LaneShiftScaleRotate(p=0.6),
        LaneRandomResizedCrop(p=0.6),
        ToTensor(to_yuv=True),
        Normalize(128.0, 128.0),
    ]
    ds = CulanePackData(str(packed / "train_lmdb"), train, seed=0)
    for i in range(len(ds)):
        item = ds[i]
        assert item["img"].shape == (3, 320, 800) and item["img2orig"].dtype == np.float32
        assert_maps_back(item["lanes"], item["img2orig"], item["lanes_orig"])
        assert all(len(lane) >= 2 for lane in item["lanes"])
