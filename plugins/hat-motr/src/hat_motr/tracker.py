"""MOTR's tracker between frames: which query slots become, stay or stop being tracks (numpy only).

MOTR decodes every frame from two sets of query slots: ``D`` *detect* slots (learnt
queries that look for objects not yet tracked) and ``T`` *track* slots (the queries of
the objects tracked so far, carried from the previous frame). For a deployable, static
graph both sets have a fixed size (256 each in the recipe); a track slot either carries
an identity or is empty (masked). After each frame, :class:`MotTracker` decides, from
the slots' scores alone, the rule of MOTR's ``RuntimeTrackerBase``:

* a **detect** slot scoring ``>= score_thresh`` (0.7) starts a new identity; it moves
  into a free track slot (the lowest free index; the most confident first when there
  are more than free slots; the rest are dropped and counted in ``num_dropped``);
* a **track** slot scoring ``>= score_thresh`` is a good frame: its miss count is reset;
  one scoring ``< filter_score_thresh`` (0.6) counts a miss, and the track is removed
  (its slot freed) once it has ``miss_tolerance`` (5) misses; a score in between
  changes nothing;
* the frame's **output** is every live track (old or new) scoring ``> out_score_thresh``
  (0.7) whose box area is ``> area_thresh`` (100 px^2 in the caller's pixels), as MOTR's
  ``filter_dt_by_score`` / ``filter_dt_by_area``. A track that is missing (low score)
  is kept for a while but not output.

Identities are numbered from 1 in order of creation (MOTChallenge ids are positive) and
restart at 1 on :meth:`MotTracker.reset`, which the post-process calls at the first
frame of every sequence.

Interface for the model's post-process (one frame, batch of one)::

    tracker = MotTracker(num_track_slots=256)
    tracker.reset()                                    # first frame of a sequence
    step = tracker.step(track_scores, track_boxes,     # (T,), (T, 4): the track slots' outputs
                        det_scores, det_boxes)         # (D,), (D, 4): the detect slots' outputs
    step.rows()                                        # the output: ids, boxes, scores (TrackStep)
    step.source      # (T,) for each track slot of the NEXT frame, the index into
                     #      concat([track slots, detect slots]) of this frame whose query
                     #      (and reference box) it takes; -1 = empty slot
    step.slot_ids    # (T,) the identity each next-frame track slot carries, -1 = empty
    step.valid       # (T,) bool, slot_ids >= 0: the mask of the next frame's track queries

``scores`` are probabilities (sigmoid of the class logit), ``boxes`` are ``x1, y1, x2,
y2`` in the pixels the output is wanted in (the original image, for the metric; convert
with :func:`normalized_cxcywh_to_xyxy` and :func:`to_original`). Track-slot entries of
empty slots are ignored. A surviving track keeps its slot (``source[j] == j``), so a
model may also keep its track queries in place and only fill ``source >= T`` slots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hat.registry import register_type


@dataclass(frozen=True)
class TrackStep:
    """What one :meth:`MotTracker.step` decided (see the module docstring)."""

    #: (T,) int64: next frame's track slot k takes the query of concat([track, detect])[source[k]]; -1 empty.
    source: np.ndarray
    #: (T,) int64: the identity carried by each next-frame track slot, -1 for an empty slot.
    slot_ids: np.ndarray
    #: (N,) int64 identities of the frame's output rows (ascending slot order).
    ids: np.ndarray
    #: (N, 4) float64 boxes of the output rows, x1, y1, x2, y2 as given.
    boxes: np.ndarray
    #: (N,) float64 scores of the output rows.
    scores: np.ndarray
    #: (N,) int64: the slot each output row came from, an index into concat([track, detect]).
    out_slots: np.ndarray
    #: (T,) int64 misses of each next-frame track slot.
    misses: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(T,) bool: which next-frame track slots carry a track (the track-query mask)."""
        return self.slot_ids >= 0

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, boxes, scores)`` of the frame's output."""
        return self.ids, self.boxes, self.scores


@register_type("MotTracker")
class MotTracker:
    """Stateful across the frames of one sequence; numpy only (see the module docstring for the rule)."""

    def __init__(
        self,
        num_track_slots: int = 256,
        score_thresh: float = 0.7,
        filter_score_thresh: float = 0.6,
        miss_tolerance: int = 5,
        out_score_thresh: float = 0.7,
        area_thresh: float = 100.0,
    ) -> None:
        if num_track_slots < 1:
            raise ValueError(f"num_track_slots must be >= 1, got {num_track_slots}")
        if not 0.0 <= filter_score_thresh <= score_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= filter_score_thresh ({filter_score_thresh}) <= score_thresh ({score_thresh}) <= 1"
            )
        if miss_tolerance < 1:
            raise ValueError(f"miss_tolerance must be >= 1, got {miss_tolerance}")
        self.num_track_slots = int(num_track_slots)
        self.score_thresh = float(score_thresh)
        self.filter_score_thresh = float(filter_score_thresh)
        self.miss_tolerance = int(miss_tolerance)
        self.out_score_thresh = float(out_score_thresh)
        self.area_thresh = float(area_thresh)
        self.reset()

    def reset(self) -> None:
        """Forget every track (the next frame starts a sequence); identities restart at 1."""
        self.slot_ids = np.full(self.num_track_slots, -1, dtype=np.int64)
        self.misses = np.zeros(self.num_track_slots, dtype=np.int64)
        self.next_id = 1
        self.num_dropped = 0

    @property
    def num_active(self) -> int:
        return int((self.slot_ids >= 0).sum())

    def step(
        self,
        track_scores: np.ndarray | Sequence[float],
        track_boxes: np.ndarray,
        det_scores: np.ndarray | Sequence[float],
        det_boxes: np.ndarray,
    ) -> TrackStep:
        """Advance by one frame: the track slots' and detect slots' scores and boxes -> a :class:`TrackStep`."""
        t_scores = _vector(track_scores, "track_scores")
        d_scores = _vector(det_scores, "det_scores")
        t_boxes = _boxes(track_boxes, "track_boxes")
        d_boxes = _boxes(det_boxes, "det_boxes")
        T = self.num_track_slots
        if len(t_scores) != T or len(t_boxes) != T:
            raise ValueError(
                f"the tracker has {T} track slots, got {len(t_scores)} track scores and {len(t_boxes)} track boxes"
            )
        if len(d_scores) != len(d_boxes):
            raise ValueError(f"{len(d_scores)} detect scores but {len(d_boxes)} detect boxes")
        ids, misses = self.slot_ids.copy(), self.misses.copy()
        source = np.where(ids >= 0, np.arange(T), -1)
        live = ids >= 0
        good = live & (t_scores >= self.score_thresh)
        misses[good] = 0
        bad = live & (t_scores < self.filter_score_thresh)
        misses[bad] += 1
        dead = bad & (misses >= self.miss_tolerance)
        ids[dead], misses[dead], source[dead] = -1, 0, -1
        # New identities from the detect slots, the most confident first, into the lowest free slots.
        new = np.flatnonzero(d_scores >= self.score_thresh)
        new = new[np.argsort(-d_scores[new], kind="stable")]
        free = np.flatnonzero(ids < 0)
        taken = min(len(new), len(free))
        self.num_dropped += len(new) - taken
        for slot, det in zip(free[:taken], new[:taken], strict=True):
            ids[slot], misses[slot], source[slot] = self.next_id, 0, T + det
            self.next_id += 1
        # The frame's output: live tracks (old and new) over the score and area thresholds.
        all_scores = np.concatenate([t_scores, d_scores])
        all_boxes = np.concatenate([t_boxes, d_boxes])
        slots = np.flatnonzero(ids >= 0)
        srcs = source[slots]
        scores, boxes = all_scores[srcs], all_boxes[srcs]
        area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
        keep = (scores > self.out_score_thresh) & (area > self.area_thresh)
        self.slot_ids, self.misses = ids, misses
        return TrackStep(
            source=source,
            slot_ids=ids.copy(),
            ids=ids[slots][keep],
            boxes=boxes[keep],
            scores=scores[keep],
            out_slots=srcs[keep],
            misses=misses.copy(),
        )

    def __repr__(self) -> str:
        return (
            f"MotTracker(num_track_slots={self.num_track_slots}, score_thresh={self.score_thresh}, "
            f"filter_score_thresh={self.filter_score_thresh}, miss_tolerance={self.miss_tolerance}, "
            f"out_score_thresh={self.out_score_thresh}, area_thresh={self.area_thresh})"
        )


def _vector(values: np.ndarray | Sequence[float], name: str) -> np.ndarray:
    arr = np.asarray(_numpy(values), dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one score per slot, shape (S,), got {arr.shape}")
    return arr


def _boxes(values: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(_numpy(values), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"{name} must be (S, 4) x1, y1, x2, y2, got {arr.shape}")
    return arr


def _numpy(values):
    """Tensors (torch, on any device) to numpy without importing torch here."""
    if hasattr(values, "detach"):
        return values.detach().cpu().numpy()
    return values


# -- box conversions for the post-process --------------------------------------------------------
def normalized_cxcywh_to_xyxy(boxes: np.ndarray, width: float, height: float) -> np.ndarray:
    """Model boxes (``cx, cy, w, h`` in [0, 1] of the network input) -> ``x1, y1, x2, y2`` input pixels."""
    b = np.asarray(_numpy(boxes), dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = b[:, 0] * width, b[:, 1] * height, b[:, 2] * width, b[:, 3] * height
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def to_original(
    boxes: np.ndarray,
    scale_factor: Sequence[float] = (1.0, 1.0),
    pad_offset: Sequence[float] = (0.0, 0.0),
    ori_shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Input-pixel ``x1, y1, x2, y2`` -> original-image pixels: undo core's Pad offset and Resize scale.

    ``scale_factor`` (sx, sy) and ``pad_offset`` (x, y) are what :mod:`hat.data.transforms`
    records in a sample; with ``ori_shape`` (h, w) the boxes are clipped to the image.
    """
    b = np.asarray(_numpy(boxes), dtype=np.float64).reshape(-1, 4).copy()
    sx, sy = (float(v) for v in scale_factor)
    px, py = (float(v) for v in pad_offset)
    b[:, [0, 2]] = (b[:, [0, 2]] - px) / sx
    b[:, [1, 3]] = (b[:, [1, 3]] - py) / sy
    if ori_shape is not None:
        h, w = (float(v) for v in ori_shape)
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    return b
