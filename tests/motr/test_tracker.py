"""MotTracker: MOTR's rule for starting, keeping and ending tracks, and the slot assignment it hands back."""

from __future__ import annotations

import numpy as np
import pytest

from hat_motr.tracker import MotTracker, normalized_cxcywh_to_xyxy, to_original

T, D = 4, 3
BOX = np.array([10.0, 10.0, 30.0, 40.0])  # 600 px^2


def frame(track: dict[int, float] | None = None, det: dict[int, float] | None = None, box: np.ndarray = BOX):
    """Scores and boxes of the T track and D detect slots: the given slots score, the others 0."""
    ts, ds = np.zeros(T), np.zeros(D)
    for k, v in (track or {}).items():
        ts[k] = v
    for k, v in (det or {}).items():
        ds[k] = v
    return ts, np.tile(box, (T, 1)), ds, np.tile(box, (D, 1))


def test_a_detection_at_07_starts_an_identity_in_the_lowest_free_slot() -> None:
    tracker = MotTracker(num_track_slots=T)
    step = tracker.step(*frame(det={0: 0.69, 1: 0.7, 2: 0.9}))
    # the most confident first: det 2 -> slot 0 (id 1), det 1 -> slot 1 (id 2); 0.69 starts nothing
    assert step.slot_ids.tolist() == [1, 2, -1, -1]
    assert step.source.tolist() == [T + 2, T + 1, -1, -1]
    assert step.valid.tolist() == [True, True, False, False]
    # output: score > 0.7 strictly, so the new track at exactly 0.7 is kept but not shown
    assert step.ids.tolist() == [1] and step.scores.tolist() == [0.9] and step.out_slots.tolist() == [T + 2]
    np.testing.assert_array_equal(step.boxes, BOX[None])
    nxt = tracker.step(*frame(track={0: 0.8, 1: 0.8}, det={1: 0.95}))
    assert nxt.slot_ids.tolist() == [1, 2, 3, -1] and nxt.source.tolist() == [0, 1, T + 1, -1]
    assert nxt.ids.tolist() == [1, 2, 3]


def test_five_misses_end_a_track_and_a_good_frame_resets_the_count() -> None:
    tracker = MotTracker(num_track_slots=T)
    tracker.step(*frame(det={0: 0.9}))
    for _ in range(4):  # four misses: still tracked (not shown)
        step = tracker.step(*frame(track={0: 0.5}))
        assert step.slot_ids[0] == 1 and step.ids.size == 0
    assert step.misses[0] == 4
    step = tracker.step(*frame(track={0: 0.65}))  # between 0.6 and 0.7: neither a miss nor a good frame
    assert step.misses[0] == 4 and step.ids.size == 0
    step = tracker.step(*frame(track={0: 0.7}))  # a good frame
    assert step.misses[0] == 0 and step.slot_ids[0] == 1
    for k in range(5):
        step = tracker.step(*frame(track={0: 0.59}))
        assert step.slot_ids[0] == (1 if k < 4 else -1)
    assert step.source[0] == -1 and tracker.num_active == 0
    # the freed slot takes the next new identity; ids are never reused
    assert tracker.step(*frame(det={2: 0.8})).slot_ids.tolist() == [2, -1, -1, -1]


def test_small_boxes_are_tracked_but_not_output() -> None:
    tracker = MotTracker(num_track_slots=T)
    small = np.array([0.0, 0.0, 10.0, 10.0])  # exactly 100 px^2: not > 100
    step = tracker.step(*frame(det={0: 0.9}, box=small))
    assert step.slot_ids[0] == 1 and step.ids.size == 0
    step = tracker.step(*frame(track={0: 0.9}, box=small + [0, 0, 0.5, 0]))
    assert step.ids.tolist() == [1]


def test_full_slots_drop_new_identities_and_reset_restarts_ids() -> None:
    tracker = MotTracker(num_track_slots=2)
    ts, tb = np.zeros(2), np.tile(BOX, (2, 1))
    step = tracker.step(ts, tb, np.array([0.9, 0.8, 0.75]), np.tile(BOX, (3, 1)))
    assert step.slot_ids.tolist() == [1, 2] and tracker.num_dropped == 1
    tracker.reset()
    assert tracker.num_active == 0 and tracker.num_dropped == 0
    assert tracker.step(ts, tb, np.array([0.0, 0.9, 0.0]), np.tile(BOX, (3, 1))).slot_ids.tolist() == [1, -1]


def test_scores_of_empty_track_slots_are_ignored_and_shapes_are_checked() -> None:
    tracker = MotTracker(num_track_slots=T)
    step = tracker.step(*frame(track={0: 0.99, 1: 0.99}))
    assert step.slot_ids.tolist() == [-1] * T and step.ids.size == 0
    with pytest.raises(ValueError, match="4 track slots"):
        tracker.step(np.zeros(3), np.zeros((3, 4)), np.zeros(D), np.zeros((D, 4)))
    with pytest.raises(ValueError, match=r"\(S, 4\)"):
        tracker.step(np.zeros(T), np.zeros((T, 5)), np.zeros(D), np.zeros((D, 4)))
    with pytest.raises(ValueError, match="filter_score_thresh"):
        MotTracker(score_thresh=0.5, filter_score_thresh=0.6)


def test_box_conversions_back_to_the_original_image() -> None:
    norm = np.array([[0.5, 0.5, 0.25, 0.5]])
    xyxy = normalized_cxcywh_to_xyxy(norm, width=200, height=100)
    np.testing.assert_allclose(xyxy, [[75, 25, 125, 75]])
    back = to_original(xyxy, scale_factor=(0.5, 0.25), pad_offset=(10, 5), ori_shape=(300, 400))
    np.testing.assert_allclose(back, [[130, 80, 230, 280]])
    np.testing.assert_allclose(to_original([[-40, 0, 900, 10]], ori_shape=(300, 400)), [[0, 0, 400, 10]])
