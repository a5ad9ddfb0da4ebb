"""Keypoints -> heatmap targets -> HeatmapDecoder -> metrics, and the metrics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hat_keypoint.metrics import MeanKeypointDist, PCKMetric
from hat_keypoint.model import HeatmapDecoder, KeypointPostProcess, decode_heatmaps
from tests.keypoint.heatmap_reference import NUM, SHAPE, SIGMA, SIZE, STRIDE, random_keypoints, reference_targets


def _data_side_transform():
    try:
        from hat_keypoint.transforms import GenerateHeatmapTarget
    except ImportError:
        return None
    return GenerateHeatmapTarget(num_ldmk=NUM, feat_stride=STRIDE, heatmap_shape=SHAPE, sigma=SIGMA)


def make_targets(keypoints: torch.Tensor):
    """Targets as the training data makes them: the data side's GenerateHeatmapTarget when
    it is installed, else :func:`reference_targets` (the same convention)."""
    transform = _data_side_transform()
    if transform is None:
        return reference_targets(keypoints)
    maps, weights = [], []
    rng = np.random.default_rng(0)
    for sample in keypoints:
        image = np.zeros((SIZE, SIZE, 3), np.uint8)
        out = transform({"img": image, "keypoints": sample.numpy().astype(np.float32)}, rng)
        maps.append(torch.as_tensor(np.asarray(out["heatmap"]), dtype=torch.float32))
        weights.append(torch.as_tensor(np.asarray(out["heatmap_weight"]), dtype=torch.float32).reshape(NUM))
    return torch.stack(maps), torch.stack(weights)


def evaluate(keypoints: torch.Tensor, pred: torch.Tensor) -> dict[str, float]:
    pck, dist = PCKMetric(alpha=0.1), MeanKeypointDist()
    batch, outputs = {"keypoints": keypoints}, {"pred_keypoints": pred}
    for metric in (pck, dist):
        metric.update(batch, outputs)
    return {**pck.compute(), **dist.compute()}


# -- round trip ---------------------------------------------------------------------------------


def test_data_side_targets_follow_the_decoder_convention() -> None:
    transform = _data_side_transform()
    if transform is None:
        pytest.skip("hat_keypoint.transforms.GenerateHeatmapTarget is not there yet")
    keypoints = random_keypoints(4, 0.0, SIZE, seed=3)
    heatmap, weight = make_targets(keypoints)
    ref_heatmap, ref_weight = reference_targets(keypoints)
    assert heatmap.shape == (4, NUM, *SHAPE)
    assert torch.equal(weight, ref_weight)
    valid = ref_weight.bool()
    assert torch.allclose(heatmap[valid], ref_heatmap[valid], atol=1e-4)


def test_round_trip_averaged_is_sub_pixel() -> None:
    # Keypoints at least 2 cells from the border: the 5x5 window sees the whole Gaussian core.
    keypoints = random_keypoints(16, 2 * STRIDE, SIZE - 2 * STRIDE, seed=0)
    heatmap, weight = make_targets(keypoints)
    assert heatmap.shape == (16, NUM, *SHAPE)
    assert torch.equal(weight, keypoints[..., 2])
    pred, scores = HeatmapDecoder(scale=STRIDE, mode="averaged", kernel=5)(heatmap)
    assert pred.shape == (16, NUM, 2) and scores.shape == (16, NUM)
    result = evaluate(keypoints, pred)
    assert result["PCK@0.1"] == 1.0
    assert result["MeanKeypointDist"] < 0.5
    valid = keypoints[..., 2] > 0
    error = (pred - keypoints[..., :2]).norm(dim=-1)[valid]
    assert float(error.max()) < 0.5  # an eighth of a cell at worst
    assert torch.allclose(scores[valid], heatmap.flatten(2).amax(-1)[valid])


def test_round_trip_whole_crop_including_borders() -> None:
    # Near the border the Gaussian is cut by the heatmap's edge, which biases the average
    # inward by up to about a cell; PCK@0.1 still holds.
    keypoints = random_keypoints(16, 0.0, SIZE - 1e-3, seed=1)
    heatmap, _ = make_targets(keypoints)
    pred, _ = decode_heatmaps(heatmap, STRIDE, "averaged", 5)
    assert evaluate(keypoints, pred)["PCK@0.1"] == 1.0


@pytest.mark.parametrize("low,high", [(0.0, SIZE - 1e-3), (2 * STRIDE, SIZE - 2 * STRIDE)])
def test_round_trip_max_mode_within_half_a_cell(low: float, high: float) -> None:
    keypoints = random_keypoints(16, low, high, seed=2)
    heatmap, _ = make_targets(keypoints)
    pred, _ = decode_heatmaps(heatmap, STRIDE, "max")
    valid = keypoints[..., 2] > 0
    per_axis = (pred - keypoints[..., :2]).abs()[valid]
    assert float(per_axis.max()) <= STRIDE / 2 + 1e-4
    error = (pred - keypoints[..., :2]).norm(dim=-1)[valid]
    assert float(error.max()) <= STRIDE * math.sqrt(2) / 2 + 1e-4
    # max mode only returns cell centres
    cells = pred / STRIDE - 0.5
    assert torch.allclose(cells, cells.round(), atol=1e-5)


# -- decoder details ------------------------------------------------------------------------------


def test_single_hot_cell_decodes_to_its_centre() -> None:
    heatmap = torch.zeros(1, 2, 8, 10)
    heatmap[0, 0, 3, 7] = 0.9  # row 3, column 7
    heatmap[0, 1, 0, 0] = 0.5
    for mode in ("averaged", "max"):
        pred, scores = decode_heatmaps(heatmap, 4, mode)
        assert pred[0, 0].tolist() == [(7 + 0.5) * 4, (3 + 0.5) * 4]
        assert pred[0, 1].tolist() == [2.0, 2.0]
        assert scores[0].tolist() == pytest.approx([0.9, 0.5])


def test_averaged_window_weights_and_size() -> None:
    heatmap = torch.zeros(1, 1, 9, 9)
    heatmap[0, 0, 4, 4] = 1.0
    heatmap[0, 0, 4, 5] = 0.5  # pulls x by 0.5 / 1.5 cell
    heatmap[0, 0, 4, 7] = 0.9  # 3 cells away: outside a 5x5 window, inside 7x7
    heatmap[0, 0, 3, 4] = -2.0  # negative values carry no weight
    pred, _ = decode_heatmaps(heatmap, 2, "averaged", kernel=5)
    assert pred[0, 0].tolist() == pytest.approx([(4 + 0.5 / 1.5 + 0.5) * 2, (4 + 0.5) * 2])
    pred, _ = decode_heatmaps(heatmap, 2, "averaged", kernel=7)
    assert pred[0, 0, 0].item() == pytest.approx((4 + (0.5 + 3 * 0.9) / 2.4 + 0.5) * 2)
    pred, _ = decode_heatmaps(heatmap, 2, "averaged", kernel=1)
    assert pred[0, 0].tolist() == [9.0, 9.0]


def test_non_positive_heatmap_falls_back_to_peak_cell() -> None:
    heatmap = torch.full((2, 3, 4, 4), -1.0)
    heatmap[1, 2, 1, 2] = 0.0
    pred, scores = decode_heatmaps(heatmap, 4, "averaged")
    assert torch.isfinite(pred).all()
    assert pred[1, 2].tolist() == [10.0, 6.0]
    assert scores[1, 2].item() == 0.0


def test_decoder_accepts_numpy_and_rejects_bad_arguments() -> None:
    heatmap = np.zeros((1, 1, 4, 4), np.float32)
    heatmap[0, 0, 2, 1] = 1.0
    pred, _ = decode_heatmaps(heatmap, 4)
    assert pred[0, 0].tolist() == [6.0, 10.0]
    with pytest.raises(ValueError, match="mode"):
        HeatmapDecoder(mode="mean")
    with pytest.raises(ValueError, match="odd"):
        HeatmapDecoder(kernel=4)
    with pytest.raises(ValueError, match=r"\(B, K, h, w\)"):
        decode_heatmaps(torch.zeros(4, 4))


def test_post_process_adds_predictions_and_keeps_outputs() -> None:
    keypoints = random_keypoints(3, 2 * STRIDE, SIZE - 2 * STRIDE, seed=4)
    heatmap, _ = reference_targets(keypoints)
    outputs = {"heatmap": heatmap, "other": 1}
    result = KeypointPostProcess(scale=STRIDE)(outputs, {"img": None})
    assert set(result) == {"heatmap", "other", "pred_keypoints", "pred_scores"}
    assert set(outputs) == {"heatmap", "other"}  # the input dict is not modified
    expected, scores = decode_heatmaps(heatmap, STRIDE)
    assert torch.equal(result["pred_keypoints"], expected) and torch.equal(result["pred_scores"], scores)
    renamed = KeypointPostProcess(heatmap_key="hm")({"hm": heatmap}, None)
    assert torch.equal(renamed["pred_keypoints"], expected)
    with pytest.raises(KeyError, match="heatmap"):
        KeypointPostProcess()({"hm": heatmap}, None)


# -- metrics by hand ----------------------------------------------------------------------------

# Sample 0: box of valid keypoints 10 x 20 -> threshold 0.1 * 20 = 2 px.
#   distances 1 (hit), 3 (miss), 1.5 (hit)
# Sample 1: valid (50, 50), (90, 60); (0, 0) invalid -> box 40 x 10 -> threshold 4 px.
#   distances 3 (hit), 4 (miss: not strictly below), invalid one predicted 1000 px away.
GT = torch.tensor(
    [
        [[0.0, 0.0, 1.0], [10.0, 0.0, 1.0], [10.0, 20.0, 1.0]],
        [[50.0, 50.0, 1.0], [90.0, 60.0, 1.0], [0.0, 0.0, 0.0]],
    ]
)
PRED = torch.tensor(
    [
        [[1.0, 0.0], [10.0, 3.0], [10.0, 18.5]],
        [[50.0, 53.0], [90.0, 64.0], [1000.0, 1000.0]],
    ]
)


def test_pck_and_mean_distance_by_hand() -> None:
    pck, dist = PCKMetric(alpha=0.1, feat_stride=4, img_shape=[128, 128]), MeanKeypointDist(feat_stride=4)
    assert pck.name == "PCK@0.1" and pck.higher_is_better
    assert dist.name == "MeanKeypointDist" and not dist.higher_is_better
    for i in range(2):  # one sample per batch: the result is pooled, not a mean of batches
        for metric in (pck, dist):
            metric.update({"keypoints": GT[i : i + 1]}, {"pred_keypoints": PRED[i : i + 1]})
    assert pck.compute() == {"PCK@0.1": pytest.approx(3 / 5)}  # per-batch mean would be 7/12
    assert dist.compute() == {"MeanKeypointDist": pytest.approx((1 + 3 + 1.5 + 3 + 4) / 5)}
    # compute twice: same answer; reset: empty; then the same again from scratch
    assert pck.compute() == {"PCK@0.1": pytest.approx(0.6)}
    assert dist.compute() == {"MeanKeypointDist": pytest.approx(2.5)}
    pck.reset()
    dist.reset()
    assert pck.compute() == {"PCK@0.1": 0.0}
    assert math.isnan(dist.compute()["MeanKeypointDist"])
    pck.update({"keypoints": GT}, {"pred_keypoints": PRED})
    dist.update({"keypoints": GT}, {"pred_keypoints": PRED})
    assert pck.compute()["PCK@0.1"] == pytest.approx(0.6)
    assert dist.compute()["MeanKeypointDist"] == pytest.approx(2.5)


def test_pck_alpha_changes_name_and_threshold() -> None:
    metric = PCKMetric(alpha=0.2)  # thresholds 4 and 8 px: every valid keypoint is a hit
    metric.update({"keypoints": GT}, {"pred_keypoints": PRED})
    assert metric.compute() == {"PCK@0.2": 1.0}
    metric = PCKMetric(alpha=0.05)  # thresholds 1 and 2 px: none (1 px is not below 1)
    metric.update({"keypoints": GT}, {"pred_keypoints": PRED})
    assert metric.compute() == {"PCK@0.05": 0.0}


def test_pck_single_valid_keypoint_uses_image_size_or_is_skipped() -> None:
    gt = torch.tensor([[[30.0, 30.0, 1.0], [0.0, 0.0, 0.0]]])
    pred = torch.tensor([[[35.0, 30.0], [0.0, 0.0]]])  # 5 px off; 0.1 * 128 = 12.8
    with_shape = PCKMetric(alpha=0.1, img_shape=(128, 96))
    with_shape.update({"keypoints": gt}, {"pred_keypoints": pred})
    assert with_shape.compute() == {"PCK@0.1": 1.0}
    assert float(with_shape.total) == 1.0
    without = PCKMetric(alpha=0.1)
    without.update({"keypoints": gt}, {"pred_keypoints": pred})
    assert float(without.total) == 0.0 and without.compute() == {"PCK@0.1": 0.0}


def test_metric_state_is_float64_sums_and_shapes_are_checked() -> None:
    metric = PCKMetric()
    assert metric._reductions == {"correct": "sum", "total": "sum"}
    assert metric.correct.dtype == torch.float64
    dist = MeanKeypointDist()
    assert dist._reductions == {"distance_sum": "sum", "count": "sum"}
    with pytest.raises(ValueError, match="does not match"):
        metric.update({"keypoints": GT}, {"pred_keypoints": PRED[:, :2]})
