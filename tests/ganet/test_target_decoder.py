"""GANet's targets, losses and decoder, and the oracle: ground-truth lanes -> targets -> decoder -> F1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hat_ganet.metrics import CulaneF1
from hat_ganet.model.decoder import GANetPostProcess
from hat_ganet.model.loss import GANetLoss, LaneFastFocalLoss, LaneMaskedL1Loss
from hat_ganet.model.target import GANetTarget

NET_H, NET_W = 320, 800
CROP_TOP = 270
SX = 1640 / NET_W
# validation geometry: FixedCrop rows 270..590 of the 1640x590 frame, then Resize to 320x800
IMG2ORIG = np.array([[SX, 0, 0], [0, 1, CROP_TOP], [0, 0, 1]], np.float32)


def to_net(lane: np.ndarray) -> np.ndarray:
    return np.stack([lane[:, 0] / SX, lane[:, 1] - CROP_TOP], axis=1).astype(np.float32)


def synthetic_frame(rng: np.random.Generator) -> list[np.ndarray]:
    """2-4 smooth lanes in 1640x590 pixels, CULane-style: every 10 px of height, bottom-up."""
    n = int(rng.integers(2, 5))
    vx = rng.uniform(700, 940)  # the lanes converge toward a vanishing point
    bottoms = np.sort(rng.uniform(-150, 1790, n))
    while n > 1 and np.diff(bottoms).min() < 300:
        bottoms = np.sort(rng.uniform(-150, 1790, n))
    lanes = []
    for xb in bottoms:
        y_top = rng.uniform(285, 345)
        ys = np.arange(590.0, y_top, -10.0)
        s = (590 - ys) / (590 - 250)  # 0 at the bottom, 1 at the horizon (y 250)
        xs = xb + (vx - xb) * s + rng.uniform(-120, 120) * s**2
        lanes.append(np.stack([xs, ys], axis=1).astype(np.float32))
    return lanes


def oracle_outputs(target: dict) -> dict[str, torch.Tensor]:
    """The targets as if the network had predicted them: heatmap as logits (inverse sigmoid, clipped)."""
    g = np.clip(target["gt_kpt_heatmap"], 1e-6, 1 - 1e-6)
    return {
        "kpt_heatmap": torch.from_numpy(np.log(g / (1 - g)))[None],
        "start_offset": torch.from_numpy(target["gt_start_offset"])[None],
        "sub_offset": torch.from_numpy(target["gt_sub_offset"])[None],
    }


def cat_outputs(parts: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def straight_lane(x_bottom: float, x_top: float, y_bottom: float = 316.0, y_top: float = 20.0) -> np.ndarray:
    ys = np.arange(y_bottom, y_top - 1e-6, -8.0)
    xs = x_bottom + (x_top - x_bottom) * (y_bottom - ys) / (y_bottom - y_top)
    return np.stack([xs, ys], axis=1).astype(np.float32)


# -- targets ----------------------------------------------------------------------------
def test_target_shapes_peaks_and_offsets():
    lane = straight_lane(204.0, 404.0, y_bottom=300, y_top=60)
    sample = {"img": np.zeros((NET_H, NET_W, 3), np.uint8), "lanes": [lane], "file": "x.jpg"}
    out = GANetTarget()(sample, np.random.default_rng(0))
    assert out["file"] == "x.jpg" and "gt_kpt_heatmap" not in sample  # input not written to
    heat, start, sub, mask = out["gt_kpt_heatmap"], out["gt_start_offset"], out["gt_sub_offset"], out["gt_sub_mask"]
    assert heat.shape == mask.shape == (1, 40, 100) and start.shape == sub.shape == (2, 40, 100)
    assert heat.dtype == np.float32
    # one keypoint per heatmap row whose centre (i + 0.5) * 8 lies in [60, 300]
    rows = [i for i in range(40) if 60 <= (i + 0.5) * 8 <= 300]
    ii, jj = np.nonzero(mask[0])
    assert sorted(ii.tolist()) == rows and np.array_equal(out["gt_start_mask"], mask)
    assert np.all(heat[0, ii, jj] == 1.0) and (heat == 1.0).sum() == len(rows)
    assert heat.max() == 1.0 and heat[0, 0, :].max() == 0.0  # radius 2: nothing 3 rows away
    # sub offsets: horizontal within the cell, vertical 0 (rows are sampled at cell centres)
    assert np.all(np.abs(sub[0, ii, jj]) <= 0.5) and np.allclose(sub[1, ii, jj], 0)
    x_true = np.interp((ii + 0.5) * 8, lane[::-1, 1], lane[::-1, 0]) / 8
    assert np.allclose(jj + 0.5 + sub[0, ii, jj], x_true, atol=1e-4)
    # start offsets: every keypoint points at the bottom-most one
    bottom = ii.argmax()
    start_pos = np.stack([jj + 0.5 + start[0, ii, jj], ii + 0.5 + start[1, ii, jj]], axis=1)
    assert np.allclose(start_pos, start_pos[bottom]) and start_pos[bottom, 1] == ii.max() + 0.5
    assert np.allclose(start[:, ii[bottom], jj[bottom]], [sub[0, ii[bottom], jj[bottom]], 0])


def test_target_gaussian_is_centrenet_radius_2():
    out = GANetTarget()({"img": np.zeros((320, 800), np.uint8), "lanes": [straight_lane(404, 404)]})
    row = out["gt_kpt_heatmap"][0, 20]
    j = int(row.argmax())
    sigma = 5 / 6
    assert row[j + 1] == pytest.approx(math.exp(-1 / (2 * sigma**2)), rel=1e-5)
    assert row[j + 2] == pytest.approx(math.exp(-4 / (2 * sigma**2)), rel=1e-5) and row[j + 3] == 0


def test_target_ignores_what_is_outside_and_handles_no_lanes():
    outside = straight_lane(-100, -20)  # left of the image
    partial = straight_lane(-60, 300)  # enters the image part way up
    out = GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8), "lanes": [outside, partial]})
    ii, jj = np.nonzero(out["gt_sub_mask"][0])
    assert len(ii) and jj.min() >= 0
    start_row = ii.max()  # the start point is the bottom-most keypoint inside the image
    assert np.allclose(out["gt_start_offset"][1, ii, jj], start_row - ii)
    empty = GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8), "lanes": []})
    assert empty["gt_kpt_heatmap"].sum() == 0 and empty["gt_sub_mask"].sum() == 0
    with pytest.raises(ValueError, match="lanes"):
        GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8)})
    with pytest.raises(ValueError, match="down_scale"):
        GANetTarget(down_scale=0)


# -- losses -----------------------------------------------------------------------------
def test_focal_loss_by_hand():
    loss = LaneFastFocalLoss()
    logits = torch.zeros(1, 1, 1, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[[1.0, 0.5]]]])
    pos = -(0.5**2) * math.log(0.5)
    neg = -(0.5**4) * (0.5**2) * math.log(0.5)
    assert loss(logits, target).item() == pytest.approx(pos + neg, rel=1e-5)
    # no positives: normalised by 1, not by 0
    assert loss(logits, torch.zeros(1, 1, 1, 2)).item() == pytest.approx(-2 * 0.25 * math.log(0.5), rel=1e-5)
    assert LaneFastFocalLoss(loss_weight=2.0)(logits, target).item() == pytest.approx(2 * (pos + neg), rel=1e-5)


def test_focal_loss_is_near_zero_at_the_target_and_grows_away_from_it():
    heat = GANetTarget()({"img": np.zeros((320, 800), np.uint8), "lanes": [straight_lane(300, 500)]})
    target = torch.from_numpy(heat["gt_kpt_heatmap"])[None]
    confident = torch.where(target == 1, 20.0, -20.0)
    assert LaneFastFocalLoss()(confident, target).item() < 1e-6
    values = [LaneFastFocalLoss()(torch.roll(confident, shift, dims=-1), target).item() for shift in (0, 1, 2, 4)]
    assert values == sorted(values) and values[-1] > 10
    g = target.clamp(1e-6, 1 - 1e-6)
    assert LaneFastFocalLoss()(torch.log(g / (1 - g)), target).item() < 0.05  # the Gaussian itself


def test_masked_l1():
    pred = torch.zeros(1, 2, 2, 2, requires_grad=True)
    target = torch.ones(1, 2, 2, 2)
    target[0, :, 1, 1] = 100.0  # unmasked: ignored
    mask = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    assert LaneMaskedL1Loss()(pred, target, mask).item() == pytest.approx(1.0)
    target[0, 0, 0, 0] = 3.0
    assert LaneMaskedL1Loss(0.5)(pred, target, mask).item() == pytest.approx(0.5 * (3 + 1 + 1 + 1) / 4)
    empty = LaneMaskedL1Loss()(pred, target, torch.zeros_like(mask))
    assert empty.item() == 0.0 and empty.requires_grad


def test_ganet_loss_terms_and_weights():
    t = GANetTarget()({"img": np.zeros((320, 800), np.uint8), "lanes": [straight_lane(300, 500)]})
    batch = {k: torch.from_numpy(v)[None] for k, v in t.items() if k.startswith("gt_")}
    outputs = {
        "kpt_heatmap": torch.zeros(1, 1, 40, 100),
        "start_offset": torch.zeros(1, 2, 40, 100),
        "sub_offset": torch.zeros(1, 2, 40, 100),
    }
    losses = GANetLoss()(outputs, batch)
    assert set(losses) == {"loss", "kpt_loss", "start_loss", "sub_loss"}
    assert losses["loss"].item() == pytest.approx(sum(losses[k].item() for k in ("kpt_loss", "start_loss", "sub_loss")))
    mask = batch["gt_start_mask"].expand(1, 2, 40, 100) > 0
    assert losses["start_loss"].item() == pytest.approx(0.5 * batch["gt_start_offset"][mask].abs().mean().item())
    perfect = {**outputs, "start_offset": batch["gt_start_offset"], "sub_offset": batch["gt_sub_offset"]}
    assert GANetLoss()(perfect, batch)["start_loss"].item() == 0.0
    with pytest.raises(KeyError, match="GANetTarget"):
        GANetLoss()(outputs, {})


# -- decoder ----------------------------------------------------------------------------
def test_decoder_groups_two_lanes_and_maps_them_back():
    lanes = [straight_lane(200, 380), straight_lane(620, 430)]
    t = GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8), "lanes": lanes})
    outputs = oracle_outputs(t)
    pred = GANetPostProcess()(outputs, {"img2orig": torch.from_numpy(IMG2ORIG)[None]})
    assert pred["kpt_heatmap"] is outputs["kpt_heatmap"]  # raw outputs kept
    got = sorted(pred["pred_lanes"][0], key=lambda p: p[0, 0])
    assert len(got) == 2 and all(p.dtype == np.float32 for p in got)
    for lane, p in zip(lanes, got, strict=True):
        assert np.all(np.diff(p[:, 1]) < 0)  # bottom-up
        x_true = np.interp((p[:, 1] - CROP_TOP), lane[::-1, 1], lane[::-1, 0]) * SX
        assert np.abs(p[:, 0] - x_true).max() < 0.05
        assert p[0, 1] == pytest.approx(CROP_TOP + 316) and p[-1, 1] == pytest.approx(CROP_TOP + 20)
    # without img2orig the lanes stay in network-input pixels
    net = GANetPostProcess()(outputs, None)["pred_lanes"][0]
    assert max(p[:, 1].max() for p in net) == pytest.approx(316)


def test_decoder_thresholds_and_short_lanes():
    t = GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8), "lanes": [straight_lane(300, 350, y_top=236)]})
    outputs = oracle_outputs(t)  # 11 rows: 236..316 at centres 236, 244, ..., 316
    assert len(GANetPostProcess()(outputs)["pred_lanes"][0]) == 1
    assert GANetPostProcess(min_points=11)(outputs)["pred_lanes"] == [[]]  # 11 points or fewer: dropped
    dim = {**outputs, "kpt_heatmap": torch.where(outputs["kpt_heatmap"] > 0, -0.5, -20.0)}  # sigmoid 0.38
    assert GANetPostProcess()(dim)["pred_lanes"] == [[]]
    assert len(GANetPostProcess(kpt_thr=0.3)(dim)["pred_lanes"][0]) == 1
    with pytest.raises(KeyError, match="start_offset"):
        GANetPostProcess()({"kpt_heatmap": outputs["kpt_heatmap"]})
    with pytest.raises(ValueError):
        GANetPostProcess(nms_kernel=2)


def test_decoder_horizontal_nms_keeps_one_keypoint_per_row():
    t = GANetTarget()({"img": np.zeros((320, 800, 3), np.uint8), "lanes": [straight_lane(300, 300)]})
    outputs = oracle_outputs(t)
    heat = GANetPostProcess().heatmap(outputs["kpt_heatmap"])
    assert torch.equal((heat > 0.4).sum(dim=-1), (heat > 0.4).any(dim=-1).long())  # one peak per row
    # a right neighbour as strong as the peak: both survive the max-pool (a tie), and the
    # decoder still keeps one keypoint per row of the lane
    logits = outputs["kpt_heatmap"].maximum(torch.roll(outputs["kpt_heatmap"], 1, -1))
    assert (GANetPostProcess().heatmap(logits) > 0.4).sum() == 2 * (heat > 0.4).sum()
    lanes = GANetPostProcess()({**outputs, "kpt_heatmap": logits})["pred_lanes"][0]
    assert len(lanes) == 1 and len(np.unique(lanes[0][:, 1])) == len(lanes[0])


# -- the oracle -------------------------------------------------------------------------
def test_oracle_ground_truth_through_targets_and_decoder_scores_f1_above_0_99():
    rng = np.random.default_rng(13)
    metric = CulaneF1()
    target = GANetTarget()
    decode = GANetPostProcess()
    n_lanes = 0
    for _ in range(6):  # 6 batches of 8 frames
        frames = [synthetic_frame(rng) for _ in range(8)]
        samples = [
            target({"img": np.zeros((NET_H, NET_W, 3), np.uint8), "lanes": [to_net(g) for g in lanes]}, rng)
            for lanes in frames
        ]
        batch = {
            "img2orig": torch.from_numpy(np.stack([IMG2ORIG] * len(frames))),
            "lanes_orig": [[torch.from_numpy(g) for g in lanes] for lanes in frames],
            "categories": [["normal"]] * len(frames),
        }
        metric.update(batch, decode(cat_outputs([oracle_outputs(s) for s in samples]), batch))
        n_lanes += sum(len(lanes) for lanes in frames)
    out = metric.compute()
    assert out["TP"] + out["FN"] == n_lanes
    assert out["F1"] >= 0.99, out
    assert out["F1/normal"] == out["F1"]


def test_oracle_through_the_validation_transforms_and_their_img2orig():
    """The same oracle with the data side's own crop and resize: their img2orig undoes them."""
    from hat_ganet.transforms import LaneFixedCrop, LaneResize

    rng = np.random.default_rng(7)
    crop, resize, target = LaneFixedCrop(), LaneResize(), GANetTarget()
    frames = [synthetic_frame(rng) for _ in range(8)]
    samples = []
    for lanes in frames:
        s = {"img": np.zeros((590, 1640, 3), np.uint8), "lanes": lanes, "img2orig": np.eye(3, dtype=np.float32)}
        samples.append(target(resize(crop(s, rng), rng), rng))
    assert samples[0]["img"].shape[:2] == (NET_H, NET_W)
    assert np.allclose(samples[0]["img2orig"], IMG2ORIG, atol=1e-4)
    batch = {
        "img2orig": torch.from_numpy(np.stack([s["img2orig"] for s in samples])),
        "lanes_orig": [[torch.from_numpy(g) for g in lanes] for lanes in frames],
    }
    metric = CulaneF1()
    metric.update(batch, GANetPostProcess()(cat_outputs([oracle_outputs(s) for s in samples]), batch))
    assert metric.compute()["F1"] >= 0.99
