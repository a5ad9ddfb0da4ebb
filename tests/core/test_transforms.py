"""Tests for hat.data.transforms: hand-computed geometry, YUV values and reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hat.data.transforms import (
    AddGaussianNoise,
    Compose,
    Normalize,
    Pad,
    RandomFlip,
    Resize,
    ToTensor,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def blank(h: int, w: int, c: int = 3) -> np.ndarray:
    return np.zeros((h, w, c), dtype=np.uint8)


def assert_on_bright_pixel(img: np.ndarray, xy: np.ndarray) -> None:
    """The point lies inside the cell [i, i+1) x [j, j+1) of the brightest pixel."""
    gray = img if img.ndim == 2 else img.max(axis=2)
    row, col = np.unravel_index(np.argmax(gray), gray.shape)
    x, y = float(xy[0]), float(xy[1])
    assert col <= x < col + 1 and row <= y < row + 1, (x, y, col, row)


# -- Resize ------------------------------------------------------------------------------
def test_resize_keep_ratio_fits_inside_and_scales_coords():
    sample = {
        "img": blank(100, 200),
        "boxes": np.array([[10.0, 20.0, 50.0, 60.0]]),
        "points": np.array([[200.0, 100.0, 1.0]]),
    }
    out = Resize(size=(128, 128))(sample, rng())
    # scale = min(128/100, 128/200) = 0.64 -> (64, 128)
    assert out["img"].shape == (64, 128, 3)
    assert out["img_shape"] == (64, 128)
    assert out["ori_shape"] == (100, 200)
    np.testing.assert_allclose(out["scale_factor"], (0.64, 0.64))
    np.testing.assert_allclose(out["boxes"], [[6.4, 12.8, 32.0, 38.4]])
    np.testing.assert_allclose(out["points"], [[128.0, 64.0, 1.0]])  # visibility untouched


def test_resize_keep_ratio_rounds_and_uses_actual_factors():
    sample = {"img": blank(30, 70), "lanes": [np.array([[7.0, 3.0], [70.0, 30.0]])]}
    out = Resize(img_scale=[20, 100])(sample, rng())
    # scale = min(20/30, 100/70) = 2/3 -> w = 46.67 -> 47, h = 20
    assert out["img"].shape == (20, 47, 3)
    sx, sy = 47 / 70, 20 / 30
    np.testing.assert_allclose(out["scale_factor"], (sx, sy))
    np.testing.assert_allclose(out["lanes"][0], [[7 * sx, 3 * sy], [47.0, 20.0]])


def test_resize_stretch_and_grayscale_and_single_channel():
    out = Resize(size=(10, 40), keep_ratio=False)({"img": np.zeros((20, 20), np.uint8)}, rng())
    assert out["img"].shape == (10, 40)
    np.testing.assert_allclose(out["scale_factor"], (2.0, 0.5))
    out = Resize(size=(10, 10))({"img": blank(20, 20, 1)}, rng())
    assert out["img"].shape == (10, 10, 1)


def test_resize_accumulates_scale_factor():
    pipe = Compose([Resize(size=(50, 50)), Resize(size=(25, 25))])
    out = pipe({"img": blank(100, 100)}, rng())
    np.testing.assert_allclose(out["scale_factor"], (0.25, 0.25))
    assert out["ori_shape"] == (100, 100)


# -- RandomFlip --------------------------------------------------------------------------
def test_flip_maps_box_and_point_by_hand():
    sample = {
        "img": blank(20, 100),
        "boxes": np.array([[10.0, 2.0, 30.0, 8.0]]),
        "points": np.array([[0.5, 3.0], [99.5, 4.0]]),
    }
    out = RandomFlip(p=1.0)(sample, rng())
    np.testing.assert_allclose(out["boxes"], [[70.0, 2.0, 90.0, 8.0]])
    np.testing.assert_allclose(out["points"], [[99.5, 3.0], [0.5, 4.0]])
    assert out["flipped"] is True

    out = RandomFlip(p=1.0, direction="vertical")(sample, rng())
    np.testing.assert_allclose(out["boxes"], [[10.0, 12.0, 30.0, 18.0]])
    np.testing.assert_allclose(out["points"], [[0.5, 17.0], [99.5, 16.0]])


def test_flip_swaps_pairs():
    kps = np.array([[[1.0, 1.0, 2.0], [5.0, 1.0, 1.0], [3.0, 4.0, 0.0]]])  # (1 instance, K=3, D=3)
    out = RandomFlip(px=1.0, flip_pairs=[[0, 1]])({"img": blank(10, 10), "keypoints": kps}, rng())
    # x -> 10 - x, then indices 0 and 1 trade places; the flag column moves with its point
    np.testing.assert_allclose(out["keypoints"], [[[5.0, 1.0, 1.0], [9.0, 1.0, 2.0], [7.0, 4.0, 0.0]]])


def test_flip_twice_is_identity():
    img = np.random.default_rng(1).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    sample = {
        "img": img,
        "boxes": np.array([[1.0, 2.0, 4.5, 6.0]]),
        "keypoints": np.array([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]),
        "lanes": [np.array([[0.0, 0.0], [8.0, 6.5]])],
    }
    for direction in ("horizontal", "vertical"):
        flip = RandomFlip(p=1.0, direction=direction, flip_pairs=[[0, 2]])
        twice = flip(flip(sample, rng()), rng())
        for key in ("img", "boxes", "keypoints"):
            np.testing.assert_array_equal(twice[key], sample[key])
        np.testing.assert_array_equal(twice["lanes"][0], sample["lanes"][0])
        assert twice["flipped"] is False


def test_flip_probability_zero_leaves_sample():
    sample = {"img": blank(4, 4), "points": np.array([[1.0, 2.0]])}
    out = RandomFlip(p=0.0)(sample, rng())
    np.testing.assert_array_equal(out["points"], sample["points"])
    assert out["flipped"] is False


# -- Pad ---------------------------------------------------------------------------------
def test_pad_to_size_and_divisor():
    img = np.full((5, 7, 3), 9, np.uint8)
    out = Pad(size=(8, 10), pad_val=3)({"img": img, "boxes": np.array([[1.0, 1.0, 2.0, 2.0]])}, rng())
    assert out["img"].shape == (8, 10, 3)
    assert out["pad_shape"] == (8, 10) and out["pad_offset"] == (0, 0)
    assert (out["img"][:5, :7] == 9).all() and (out["img"][5:] == 3).all() and (out["img"][:, 7:] == 3).all()
    np.testing.assert_array_equal(out["boxes"], [[1.0, 1.0, 2.0, 2.0]])

    out = Pad(size_divisor=4)({"img": np.ones((5, 8), np.uint8)}, rng())
    assert out["img"].shape == (8, 8) and out["pad_shape"] == (8, 8)


def test_pad_errors():
    with pytest.raises(ValueError, match="larger"):
        Pad(size=(4, 4))({"img": blank(5, 3)}, rng())
    with pytest.raises(ValueError, match="exactly one"):
        Pad(size=(4, 4), size_divisor=2)
    with pytest.raises(ValueError, match="exactly one"):
        Pad()


def test_random_pad_shifts_coords_and_is_reproducible():
    img = np.full((4, 4, 3), 200, np.uint8)
    sample = {"img": img, "points": np.array([[0.5, 0.5]])}
    pad = Pad(size=(64, 64), random=True)
    a, b, c = pad(sample, rng(5)), pad(sample, rng(5)), pad(sample, rng(6))
    np.testing.assert_array_equal(a["img"], b["img"])
    assert a["pad_offset"] == b["pad_offset"] != c["pad_offset"]
    dx, dy = a["pad_offset"]
    np.testing.assert_allclose(a["points"], [[0.5 + dx, 0.5 + dy]])
    assert (a["img"][dy : dy + 4, dx : dx + 4] == 200).all()
    assert a["img"].sum() == img.sum()


# -- a keypoint stays on its pixel through the geometric chain ---------------------------
@pytest.mark.parametrize("direction", ["horizontal", "vertical"])
def test_keypoint_stays_on_bright_pixel(direction):
    img = blank(20, 30)
    img[7, 13] = 255
    sample = {"img": img, "keypoints": np.array([[[13.5, 7.5, 1.0]]])}
    steps = [
        Resize(size=(30, 45)),  # x1.5: no interpolation tie between neighbours
        Resize(size=(15, 23), keep_ratio=False),
        RandomFlip(p=1.0, direction=direction),
        Pad(size=(40, 40), random=True),
    ]
    generator = rng(3)
    for step in steps:
        sample = step(sample, generator)
        assert_on_bright_pixel(sample["img"], sample["keypoints"][0, 0])


# -- photometric -------------------------------------------------------------------------
def test_gaussian_noise_keeps_dtype_range_and_is_seeded():
    img = np.array([[[0, 128, 255]]], dtype=np.uint8).repeat(50, 0)
    noise = AddGaussianNoise(sigma=20.0)
    a, b = noise({"img": img}, rng(1)), noise({"img": img}, rng(1))
    assert a["img"].dtype == np.uint8
    np.testing.assert_array_equal(a["img"], b["img"])
    assert not np.array_equal(a["img"], img)
    assert AddGaussianNoise(prob=0.0)({"img": img}, rng())["img"] is img


# -- ToTensor / Normalize ----------------------------------------------------------------
# BT.601 full range by hand, for R, G, B in 0..255:
#   red   (255,0,0): Y = 76.245 -> 76,  U = 84.97 -> 85,  V = 255.5 -> 255
#   green (0,255,0): Y = 149.685 -> 150, U = 43.53 -> 44, V = 21.23 -> 21
#   blue  (0,0,255): Y = 29.07 -> 29,  U = 255.5 -> 255, V = 107.27 -> 107
#   white: (255, 128, 128); black: (0, 128, 128)
YUV = {
    (255, 0, 0): (76, 85, 255),
    (0, 255, 0): (150, 44, 21),
    (0, 0, 255): (29, 255, 107),
    (255, 255, 255): (255, 128, 128),
    (0, 0, 0): (0, 128, 128),
}


@pytest.mark.parametrize("color_space", ["bgr", "rgb", None])
def test_to_tensor_yuv_bt601(color_space):
    rgb = np.array([list(YUV)], dtype=np.uint8)  # 1 x 5 x 3
    img = rgb if color_space == "rgb" else rgb[:, :, ::-1].copy()
    sample = {"img": img} if color_space is None else {"img": img, "color_space": color_space}
    out = ToTensor(to_yuv=True)(sample, rng())
    assert out["color_space"] == "yuv"
    assert out["img"].dtype == torch.float32 and out["img"].shape == (3, 1, 5)
    expected = np.array(list(YUV.values()), dtype=np.float32).T[:, None, :]
    np.testing.assert_array_equal(out["img"].numpy(), expected)


def test_to_tensor_plain_and_rejects_v2():
    img = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    out = ToTensor()({"img": img, "boxes": np.zeros((0, 4))}, rng())
    assert out["img"].shape == (3, 2, 4)
    assert torch.equal(out["img"][1], torch.tensor(img[:, :, 1], dtype=torch.float32))
    assert isinstance(out["boxes"], np.ndarray)
    assert ToTensor()({"img": img[:, :, 0]}, rng())["img"].shape == (1, 2, 4)
    with pytest.raises(ValueError, match="BT.601"):
        ToTensor(to_yuv=True, use_yuv_v2=True)


def test_normalize_scalar_and_per_channel():
    img = torch.arange(12, dtype=torch.float32).view(3, 2, 2)
    out = Normalize(mean=2.0, std=4.0)({"img": img}, rng())
    assert torch.allclose(out["img"], (img - 2.0) / 4.0)
    out = Normalize(mean=[0.0, 4.0, 8.0], std=[1.0, 2.0, 4.0])({"img": img}, rng())
    assert torch.allclose(out["img"][1], torch.tensor([[0.0, 0.5], [1.0, 1.5]]))
    assert torch.allclose(out["img"][2], torch.tensor([[0.0, 0.25], [0.5, 0.75]]))
    assert torch.equal(img, torch.arange(12, dtype=torch.float32).view(3, 2, 2))
    with pytest.raises(ValueError, match="2 values.*3 channel"):
        Normalize(mean=[1.0, 2.0], std=1.0)({"img": img}, rng())


# -- Compose, purity, validation ---------------------------------------------------------
def make_pipeline() -> Compose:
    return Compose(
        [
            Resize(size=(24, 24)),
            RandomFlip(p=0.5, flip_pairs=[[0, 1]]),
            Pad(size=(32, 32), random=True),
            AddGaussianNoise(prob=0.5, sigma=5.0),
            ToTensor(to_yuv=True),
            Normalize(mean=128.0, std=64.0),
        ]
    )


def make_sample() -> dict:
    img = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return {
        "img": img,
        "boxes": np.array([[1.0, 2.0, 8.0, 9.0]]),
        "points": np.array([[3.0, 4.0, 1.0]]),
        "keypoints": np.array([[[1.0, 2.0, 1.0], [5.0, 6.0, 0.0]]]),
        "lanes": [np.array([[0.0, 11.0], [15.0, 0.0]])],
    }


def test_compose_reproduces_with_seed_and_varies_without():
    pipe = make_pipeline()
    a, b = pipe(make_sample(), rng(42)), pipe(make_sample(), rng(42))
    assert torch.equal(a["img"], b["img"])
    for key in ("boxes", "points", "keypoints"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["pad_offset"] == b["pad_offset"] and a["flipped"] == b["flipped"]
    outs = {pipe(make_sample(), rng(s))["pad_offset"] for s in range(5)}
    assert len(outs) > 1


def test_inputs_are_not_modified():
    sample = make_sample()
    snapshot = {k: [a.copy() for a in v] if isinstance(v, list) else v.copy() for k, v in sample.items()}
    for seed in range(4):
        make_pipeline()(sample, rng(seed))
        RandomFlip(p=1.0, direction="vertical")(sample, rng(seed))
    assert sample.keys() == snapshot.keys()
    for key, value in snapshot.items():
        if isinstance(value, list):
            for got, want in zip(sample[key], value, strict=True):
                np.testing.assert_array_equal(got, want)
        else:
            np.testing.assert_array_equal(sample[key], value)


def test_constructor_validation_and_repr():
    with pytest.raises(ValueError, match="size"):
        Resize(size=(0, 10))
    with pytest.raises(ValueError, match="interpolation"):
        Resize(size=(10, 10), interpolation="cubicle")
    with pytest.raises(ValueError, match="probability"):
        RandomFlip(p=1.5)
    with pytest.raises(ValueError, match="not both"):
        RandomFlip(p=0.5, px=0.5)
    with pytest.raises(ValueError, match="direction"):
        RandomFlip(direction="diagonal")
    with pytest.raises(ValueError, match="flip_pairs"):
        RandomFlip(flip_pairs=[[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="sigma"):
        AddGaussianNoise(sigma=-1.0)
    with pytest.raises(ValueError, match="non-zero"):
        Normalize(mean=0.0, std=[1.0, 0.0])
    assert repr(Resize(size=[128, 256])) == "Resize(size=(128, 256), keep_ratio=True, interpolation='bilinear')"
    assert repr(RandomFlip(px=0.3)) == "RandomFlip(p=0.3, direction='horizontal', flip_pairs=None)"
    assert "Pad(size=None, size_divisor=32" in repr(Compose([Pad(size_divisor=32)]))


def test_registered_for_configs():
    from hat.data import transforms
    from hat.registry import Registry

    registry = Registry()
    registry.add_marked(transforms)
    pipe = registry.build(
        {"type": "Compose", "transforms": [{"type": "Resize", "size": [8, 8]}, {"type": "RandomFlip", "px": 1.0}]}
    )
    out = pipe({"img": blank(4, 4), "points": np.array([[1.0, 1.0]])}, rng())
    np.testing.assert_allclose(out["points"], [[6.0, 2.0]])
