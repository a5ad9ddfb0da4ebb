"""CarfusionPackData, the keypoint transforms and a DataLoader over the whole training pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hat.data import transforms as core_transforms
from hat.data.packer import run_pack
from hat.registry import Registry
from hat_keypoint import dataset as dataset_module
from hat_keypoint import transforms as keypoint_transforms
from hat_keypoint.dataset import CarfusionPackData
from hat_keypoint.keypoints import FLIP_PAIRS
from hat_keypoint.packer import CarfusionPacker
from hat_keypoint.synth import generate_carfusion
from hat_keypoint.transforms import GenerateHeatmapTarget, RandomPadLdmkData

TRAIN_PIPELINE = [
    {"type": "RandomFlip", "px": 0.5, "flip_pairs": [list(p) for p in FLIP_PAIRS]},
    {"type": "Resize", "img_scale": [128, 128], "keep_ratio": True},
    {"type": "RandomPadLdmkData", "size": [128, 128]},
    {"type": "AddGaussianNoise", "prob": 0.2, "mean": 0, "sigma": 2},
    {"type": "GenerateHeatmapTarget", "num_ldmk": 12, "feat_stride": 4, "heatmap_shape": [32, 32], "sigma": 1.0},
    {"type": "ToTensor", "to_yuv": True, "use_yuv_v2": False},
    {"type": "Normalize", "mean": 128.0, "std": 128.0},
]


@pytest.fixture(scope="module")
def train_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("carfusion")
    generate_carfusion(root / "raw", seed=0, num_sequences=1, frames_per_sequence=8)
    return run_pack(CarfusionPacker(root / "raw", "train"), root / "packed").path


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    registry.add_marked(core_transforms)
    assert registry.add_marked(keypoint_transforms, owner="hat-keypoint") == 2
    assert registry.add_marked(dataset_module, owner="hat-keypoint") == 1
    return registry


# -- GenerateHeatmapTarget ---------------------------------------------------------------------
KEYPOINTS = np.array(
    [(x, y, 1.0) for x, y in [(1.3, 2.9), (17.0, 33.6), (64.2, 64.9), (126.7, 3.1), (50.5, 101.4), (9.9, 120.2)]]
    + [(40.0, 40.0, 0.0), (-2.0, 10.0, 1.0), (10.0, 128.5, 1.0)]
    + [(88.8, 77.7, 1.0), (30.1, 90.6, 1.0), (111.1, 55.5, 1.0)],
    dtype=np.float32,
)


def heatmap_target(keypoints: np.ndarray = KEYPOINTS) -> dict:
    transform = GenerateHeatmapTarget(num_ldmk=12, feat_stride=4, heatmap_shape=(32, 32), sigma=1.0)
    return transform({"img": np.zeros((128, 128, 3), np.uint8), "keypoints": keypoints}, np.random.default_rng(0))


def refine(window: np.ndarray, mode: str) -> tuple[float, float]:
    """Sub-cell offset (dx, dy) of a 3x3 window around the peak (missing neighbours are 0)."""
    if mode == "centre_of_mass":
        total = window.sum()
        offsets = np.array([-1.0, 0.0, 1.0])
        return float((window.sum(0) * offsets).sum() / total), float((window.sum(1) * offsets).sum() / total)
    # log-parabola: exact for a Gaussian
    logs = np.log(np.maximum(window, 1e-30))

    def vertex(left: float, mid: float, right: float) -> float:
        return 0.5 * (left - right) / (left - 2 * mid + right)

    return vertex(logs[1, 0], logs[1, 1], logs[1, 2]), vertex(logs[0, 1], logs[1, 1], logs[2, 1])


def test_heatmap_peaks_in_the_cell_holding_the_keypoint() -> None:
    out = heatmap_target()
    heatmap, weight = out["heatmap"], out["heatmap_weight"]
    assert heatmap.shape == (12, 32, 32) and heatmap.dtype == np.float32
    assert weight.dtype == np.float32 and weight.tolist() == [1] * 6 + [0, 0, 0] + [1] * 3
    for k in np.flatnonzero(weight):
        x, y = KEYPOINTS[k, :2]
        i, j = np.unravel_index(np.argmax(heatmap[k]), heatmap[k].shape)
        assert (i, j) == (math.floor(y / 4), math.floor(x / 4))
        # the value at a cell centre is the Gaussian of its distance, in cells, to x / stride
        expected = math.exp(-(((j + 0.5) - x / 4) ** 2 + ((i + 0.5) - y / 4) ** 2) / 2)
        assert heatmap[k, i, j] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("mode", "tolerance"), [("centre_of_mass", 0.25), ("log_parabola", 1e-3)])
def test_heatmap_decodes_back_to_the_keypoint(mode: str, tolerance: float) -> None:
    out = heatmap_target()
    checked = 0
    for k in np.flatnonzero(out["heatmap_weight"]):
        padded = np.pad(out["heatmap"][k], 1)
        i, j = np.unravel_index(np.argmax(padded), padded.shape)
        dx, dy = refine(padded[i - 1 : i + 2, j - 1 : j + 2], mode)
        # padded cell (i, j) is heatmap cell (i - 1, j - 1), whose centre is at (j - 1) + 0.5
        cell_x, cell_y = (j - 1) + 0.5 + dx, (i - 1) + 0.5 + dy
        x, y = KEYPOINTS[k, :2] / 4
        if not (1 <= i - 1 <= 30 and 1 <= j - 1 <= 30):
            continue  # on the border the window's missing neighbours bias any refinement
        assert abs(cell_x - x) < tolerance and abs(cell_y - y) < tolerance, (k, cell_x, x, cell_y, y)
        checked += 1
    assert checked == 7  # all but the two keypoints in border cells


def test_invalid_keypoints_get_zero_heatmaps_and_the_sample_is_untouched() -> None:
    keypoints = KEYPOINTS.copy()
    out = heatmap_target(keypoints)
    for k in (6, 7, 8):  # invalid flag, left of the image, below the heatmap
        assert out["heatmap_weight"][k] == 0 and not out["heatmap"][k].any()
    assert out["keypoints"] is keypoints
    np.testing.assert_array_equal(keypoints, KEYPOINTS)


def test_heatmap_rejects_a_wrong_number_of_keypoints() -> None:
    with pytest.raises(ValueError, match=r"\(12, 3\)"):
        heatmap_target(KEYPOINTS[:5])
    with pytest.raises(ValueError, match="heatmap_shape"):
        GenerateHeatmapTarget(12, 4, (32,), 1.0)


# -- RandomPadLdmkData -------------------------------------------------------------------------
def padded(random: bool, seed: int = 0, keypoints: np.ndarray | None = None) -> dict:
    img = np.full((50, 128, 3), 200, np.uint8)
    if keypoints is None:
        keypoints = np.array([[10.0, 20.0, 1.0]] * 12, np.float32)
    return RandomPadLdmkData((128, 128), random=random)(
        {"img": img, "keypoints": keypoints}, np.random.default_rng(seed)
    )


def test_pad_without_random_keeps_the_crop_top_left() -> None:
    out = padded(random=False)
    assert out["img"].shape == (128, 128, 3) and out["pad_offset"] == (0, 0)
    assert (out["img"][:50] == 200).all() and (out["img"][50:] == 0).all()
    np.testing.assert_array_equal(out["keypoints"][0], [10, 20, 1])


def test_random_pad_moves_keypoints_with_the_crop_reproducibly() -> None:
    offsets = set()
    for seed in range(20):
        out = padded(random=True, seed=seed)
        dx, dy = out["pad_offset"]
        assert dx == 0 and 0 <= dy <= 78  # the width already fills the canvas
        assert (out["img"][dy : dy + 50] == 200).all() and out["img"].sum() == 200 * 50 * 128 * 3
        np.testing.assert_array_equal(out["keypoints"][0], [10, 20 + dy, 1])
        offsets.add(dy)
        again = padded(random=True, seed=seed)
        assert again["pad_offset"] == out["pad_offset"]
    assert len(offsets) > 5


def test_pad_marks_keypoints_outside_the_canvas_invalid() -> None:
    keypoints = np.array([[10.0, 20.0, 1.0], [-1.0, 20.0, 1.0], [130.0, 5.0, 1.0]] + [[5.0, 5.0, 0.0]] * 9, np.float32)
    out = padded(random=False, keypoints=keypoints)
    assert out["keypoints"][:3, 2].tolist() == [1, 0, 0]
    assert keypoints[1, 2] == 1  # input untouched


def test_pad_refuses_a_crop_larger_than_the_canvas() -> None:
    with pytest.raises(ValueError, match="larger than"):
        RandomPadLdmkData((32, 32))({"img": np.zeros((40, 20, 3), np.uint8)}, np.random.default_rng(0))


# -- dataset and DataLoader --------------------------------------------------------------------
def test_dataset_decodes_crops_and_keypoints(train_pack: Path) -> None:
    ds = CarfusionPackData(str(train_pack))
    assert len(ds) == 16
    sample = ds[0]
    assert set(sample) == {"img", "color_space", "keypoints", "img_name"}
    assert sample["img"].dtype == np.uint8 and sample["img"].ndim == 3 and sample["img"].shape[2] == 3
    assert sample["color_space"] == "bgr"
    assert sample["keypoints"].dtype == np.float32 and sample["keypoints"].shape == (12, 3)
    assert sample["img_name"] == "car_train1/1_00000_1"
    valid = sample["keypoints"][:, 2] > 0
    h, w = sample["img"].shape[:2]
    assert (sample["keypoints"][valid, 0] < w).all() and (sample["keypoints"][valid, 1] < h).all()


def first_batch(registry: Registry, train_pack: Path, seed: int, epoch: int = 0, num_workers: int = 0) -> dict:
    ds = registry.build({"type": "CarfusionPackData", "data_path": str(train_pack), "transforms": TRAIN_PIPELINE})
    ds.seed = seed
    ds.set_epoch(epoch)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, shuffle=False, num_workers=num_workers)
    return next(iter(loader))


def test_train_pipeline_batches_with_the_default_collate(registry: Registry, train_pack: Path) -> None:
    batch = first_batch(registry, train_pack, seed=7)
    assert batch["img"].shape == (8, 3, 128, 128) and batch["img"].dtype == torch.float32
    assert batch["img"].abs().max() <= 1.0  # YUV 0..255 normalized by (x - 128) / 128
    assert batch["heatmap"].shape == (8, 12, 32, 32) and batch["heatmap"].dtype == torch.float32
    assert batch["heatmap_weight"].shape == (8, 12)
    assert batch["keypoints"].shape == (8, 12, 3) and batch["keypoints"].dtype == torch.float32
    assert len(batch["img_name"]) == 8 and batch["color_space"] == ["yuv"] * 8
    # every valid keypoint lies in the padded canvas and its heatmap peaks at its cell
    kps, heatmap = batch["keypoints"], batch["heatmap"]
    valid = kps[..., 2] > 0
    assert torch.equal(batch["heatmap_weight"] > 0, valid)
    xy = kps[valid][:, :2]
    assert ((xy >= 0) & (xy < 128)).all()
    peaks = heatmap[valid].flatten(1).argmax(1)
    cells = (xy[:, 1] // 4).long() * 32 + (xy[:, 0] // 4).long()
    on_edge = ((xy / 4 - (xy / 4).round()).abs() < 1e-4).any(1)  # two cells tie there
    assert ((peaks == cells) | on_edge).all()


def test_the_same_seed_reproduces_a_batch(registry: Registry, train_pack: Path) -> None:
    one = first_batch(registry, train_pack, seed=7)
    two = first_batch(registry, train_pack, seed=7, num_workers=2)
    other_epoch = first_batch(registry, train_pack, seed=7, epoch=1)
    for key in ("img", "heatmap", "keypoints"):
        assert torch.equal(one[key], two[key])
    assert not torch.equal(one["img"], other_epoch["img"])
