"""CulaneF1 on hand-made frames, its IoU against a brute-force one, and the lane helpers it uses."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from hat_ganet.lanes import culane_lines_path, interp_lane, sample_lane_at_rows, write_culane_lines
from hat_ganet.metrics import CulaneF1, frame_counts, lane_ious, match_lanes


def lane(x_bottom: float, x_top: float, y_bottom: float = 580.0, y_top: float = 300.0, bend: float = 0.0):
    """A bottom-up CULane-style lane sampled every 10 px of height, bent by ``bend`` px mid-way."""
    ys = np.arange(y_bottom, y_top - 1e-6, -10.0)
    s = (y_bottom - ys) / (y_bottom - y_top)
    xs = x_bottom + (x_top - x_bottom) * s + bend * 4 * s * (1 - s)
    return np.stack([xs, ys], axis=1).astype(np.float32)


def brute_force_iou(a: np.ndarray, b: np.ndarray, shape=(590, 1640), width=30) -> float:
    """Independent of polylines' thick-line code: a 1 px centre line, then every pixel within
    width/2 of it (exact Euclidean distance transform), then a pixel count."""

    def mask(points):
        centre = np.zeros(shape, np.uint8)
        pix = np.round(interp_lane(points)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(centre, [pix], False, 1, thickness=1)
        return distance_transform_edt(centre == 0) <= width / 2

    ma, mb = mask(a), mask(b)
    return float((ma & mb).sum() / (ma | mb).sum())


def test_identical_lane_is_a_true_positive():
    gt = [lane(400, 700), lane(1200, 900)]
    assert frame_counts(gt, gt) == (2, 0, 0)
    assert np.allclose(np.diag(lane_ious(gt, gt)), 1.0)


def test_lane_shifted_by_40px_is_a_false_positive_and_a_false_negative():
    gt = [lane(400, 700)]
    ious = lane_ious([gt[0] + np.float32([40, 0])], gt)
    assert 0 < ious[0, 0] < 0.5  # 30 px wide and slanted: a sliver of overlap
    assert frame_counts([gt[0] + np.float32([40, 0])], gt) == (0, 1, 1)
    # 10 px is well inside the 0.5 IoU
    assert frame_counts([gt[0] + np.float32([10, 0])], gt) == (1, 0, 0)


def test_matching_is_one_to_one_and_maximises_total_iou():
    # greedy would give prediction 0 its best lane (0.9) and leave prediction 1 nothing
    assert match_lanes(np.array([[0.6, 0.9], [0.0, 0.7]])) == 2
    assert match_lanes(np.array([[0.9], [0.8]])) == 1  # one lane, two predictions
    assert match_lanes(np.array([[0.5]])) == 0  # IoU must be above 0.5
    gt = [lane(400, 700), lane(470, 770)]
    pred = [lane(430, 730)]  # lies between both, matches at most one
    assert frame_counts(pred, gt)[0] <= 1 and frame_counts(pred + pred, gt)[0] <= 2


@pytest.mark.parametrize("shift", [0.0, 7.0, 18.0, 33.0])
def test_iou_agrees_with_brute_force(shift):
    a = lane(400, 700, bend=60)
    b = lane(400 + shift, 700 + shift / 2, y_top=340, bend=40)
    fast = lane_ious([a], [b])[0, 0]
    slow = brute_force_iou(a, b)
    assert fast == pytest.approx(slow, abs=0.005)


def test_iou_of_lanes_leaving_the_image_counts_only_pixels_inside():
    a = lane(-60, 300, y_bottom=650)  # starts below and left of the frame
    assert lane_ious([a], [a])[0, 0] == pytest.approx(1.0)
    far = lane(-500, -400)  # entirely outside: nothing drawn, IoU 0 (and no crash)
    assert lane_ious([far], [far])[0, 0] == 0.0


def batch_of(frames):
    """(pred, gt, categories) triples -> the batch and outputs CulaneF1.update reads."""
    batch = {
        "lanes_orig": [[torch.as_tensor(g) for g in gt] for _, gt, _ in frames],
        "categories": [cats for _, _, cats in frames],
    }
    outputs = {"pred_lanes": [pred for pred, _, _ in frames]}
    return batch, outputs


def test_culane_f1_over_a_split_with_categories():
    a, b, c = lane(400, 700), lane(1200, 900), lane(800, 820)
    frames = [
        ([a, b], [a, b], ["normal"]),  # 2 TP
        ([a + np.float32([40, 0])], [a], ["curve", "night"]),  # FP + FN
        ([], [a, b, c], ["crowd"]),  # empty prediction: 3 FN
        ([c, a], [], ["cross"]),  # crossroad: 2 FP and nothing else
    ]
    metric = CulaneF1()
    for frame in frames:  # one frame per batch, and once all in one batch below
        metric.update(*batch_of([frame]))
    out = metric.compute()
    assert (out["TP"], out["FP"], out["FN"]) == (2, 3, 4)
    assert out["precision"] == pytest.approx(2 / 5)
    assert out["recall"] == pytest.approx(2 / 6)
    assert out["F1"] == pytest.approx(2 * 0.4 * (1 / 3) / (0.4 + 1 / 3))
    assert out["F1/normal"] == 1.0
    assert out["F1/crowd"] == 0.0 and out["recall/crowd"] == 0.0
    assert out["F1/curve"] == out["F1/night"] == 0.0
    assert out["FP/cross"] == 2
    assert "F1/cross" not in out and "F1/shadow" not in out  # no frames of shadow

    again = CulaneF1()
    again.update(*batch_of(frames))
    assert again.compute() == out
    assert metric.compute() == out  # compute() keeps the state
    metric.reset()
    assert metric.compute()["TP"] == 0


def test_culane_f1_checks_batch_sizes():
    with pytest.raises(ValueError, match="pred_lanes"):
        CulaneF1().update({"lanes_orig": [[]]}, {"pred_lanes": [[], []]})


def test_interp_lane_samples_50_per_segment_and_passes_through_the_points():
    pts = lane(400, 700, bend=50)[:5].astype(np.float64)
    curve = interp_lane(pts)
    assert len(curve) == 50 * (len(pts) - 1) + 1
    assert np.allclose(curve[::50], pts)
    assert len(interp_lane(pts[:2])) == 51 and len(interp_lane(pts[:1])) == 1


def test_sample_lane_at_rows_does_not_extrapolate():
    pts = lane(400, 700, y_bottom=500, y_top=300)
    out = sample_lane_at_rows(pts, np.array([250.0, 300.0, 404.0, 500.0, 520.0]))
    assert np.allclose(out[:, 1], [300.0, 404.0, 500.0])
    assert out[0, 0] == pytest.approx(700) and out[-1, 0] == pytest.approx(400)


def test_write_culane_lines(tmp_path):
    pred = [np.float32([[10, 300], [20, 580]]), np.zeros((0, 2), np.float32)]
    path = write_culane_lines(pred, "/driver_1/a.MP4/00030.jpg", tmp_path)
    assert path == tmp_path / "driver_1" / "a.MP4" / "00030.lines.txt"
    assert path.read_text() == "20.00 580.00 10.00 300.00\n"  # bottom-up, empty lanes left out
    assert write_culane_lines([], "driver_1/a.MP4/00060.jpg", tmp_path).read_text() == ""
    with pytest.raises(ValueError, match="inside the dataset"):
        culane_lines_path("../x.jpg", tmp_path)
