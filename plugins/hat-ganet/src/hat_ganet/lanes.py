"""Lane geometry shared by the targets, the decoder, the metric and ``hat predict``.

A lane is an ``(N, 2)`` array of ``x, y`` pixel coordinates, ordered bottom-up (largest
``y`` first) as in CULane's ``.lines.txt``. Two splines are used, for two purposes:

* :func:`interp_lane` is the CULane evaluator's: a natural cubic spline through the
  points, parametrised by chord length, sampled ``times`` points per segment. The metric
  must draw lanes exactly the way the official C++ evaluator does, or its IoUs (and so its
  F1) would differ from the published numbers.
* :func:`sample_lane_at_rows` gives ``x`` as a function of ``y`` at chosen rows (the
  heatmap rows the targets need), since a GANet keypoint is "where the lane crosses this
  row".

Both use scipy's ``CubicSpline(bc_type="natural")``; scipy is pinned in
``constraints.txt`` and must be a dependency of ``hat-ganet`` (core does not depend on it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from scipy.interpolate import CubicSpline

from hat.registry import register_type

LaneLike = Any  # (N, 2) array or tensor, or a flat [x1, y1, x2, y2, ...] sequence


def lane_array(lane: LaneLike) -> np.ndarray:
    """``lane`` as a float64 ``(N, 2)`` array (accepts tensors and flat CULane lists)."""
    if hasattr(lane, "detach"):
        lane = lane.detach().cpu().numpy()
    arr = np.asarray(lane, dtype=np.float64)
    if arr.ndim == 1:
        if arr.size % 2:
            raise ValueError(f"a flat lane needs an even number of values (x y pairs), got {arr.size}")
        arr = arr.reshape(-1, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"a lane must be (N, 2) x, y points, got shape {arr.shape}")
    return arr


def _drop_repeats(points: np.ndarray) -> np.ndarray:
    """Remove consecutive duplicate points: a zero chord makes the spline system singular."""
    if len(points) < 2:
        return points
    keep = np.ones(len(points), bool)
    keep[1:] = np.any(np.diff(points, axis=0) != 0, axis=1)
    return points[keep]


def interp_lane(lane: LaneLike, times: int = 50) -> np.ndarray:
    """The CULane evaluator's interpolation of one lane, ``(M, 2)`` float64.

    A natural cubic spline (second derivative 0 at both ends) for ``x(t)`` and ``y(t)``,
    with ``t`` the cumulative chord length, sampled at ``times`` evenly spaced parameters
    on every segment plus the last point. Two points give the straight segment sampled the
    same way; a single point is returned as it is; none gives an empty array.
    """
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")
    pts = _drop_repeats(lane_array(lane))
    if len(pts) < 2:
        return pts.copy()
    chord = np.sqrt((np.diff(pts, axis=0) ** 2).sum(axis=1))
    t = np.concatenate([[0.0], np.cumsum(chord)])
    # `times` samples from each knot, excluding the next knot (it starts the next segment)
    frac = np.arange(times, dtype=np.float64) / times
    ts = (t[:-1, None] + chord[:, None] * frac[None, :]).ravel()
    ts = np.append(ts, t[-1])
    if len(pts) == 2:
        return pts[0] + (pts[1] - pts[0]) * (ts / t[-1])[:, None]
    spline = CubicSpline(t, pts, bc_type="natural", axis=0)
    return spline(ts)


def sample_lane_at_rows(lane: LaneLike, rows: np.ndarray) -> np.ndarray:
    """The lane's ``(x, y)`` at each of ``rows`` (``y`` values) inside its vertical extent.

    ``x(y)`` is a natural cubic spline through the points sorted by ``y`` (points sharing a
    ``y`` are averaged; two distinct rows give a straight line); rows outside the lane's
    ``[y_min, y_max]`` are left out rather than extrapolated. Returns ``(M, 2)`` float64
    ordered as ``rows`` is. CULane lanes and their flips, crops, resizes and small
    rotations are single-valued in ``y``, which is what makes ``x(y)`` well defined.
    """
    pts = lane_array(lane)
    rows = np.asarray(rows, dtype=np.float64).ravel()
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts) == 0 or rows.size == 0:
        return np.zeros((0, 2))
    ys, inverse = np.unique(pts[:, 1], return_inverse=True)
    xs = np.bincount(inverse, weights=pts[:, 0]) / np.bincount(inverse)
    inside = (rows >= ys[0]) & (rows <= ys[-1])
    want = rows[inside]
    if len(ys) == 1:
        x = np.full(len(want), xs[0])
    elif len(ys) == 2:
        x = np.interp(want, ys, xs)
    else:
        x = CubicSpline(ys, xs, bc_type="natural")(want)
    return np.stack([x, want], axis=1)


def culane_lines_text(lanes: Iterable[LaneLike], decimals: int = 2) -> str:
    """A CULane ``.lines.txt`` body: one lane per line, ``x1 y1 x2 y2 ...``, bottom-up."""
    lines = []
    for lane in lanes:
        pts = lane_array(lane)
        if len(pts) == 0:
            continue
        pts = pts[np.argsort(-pts[:, 1], kind="stable")]  # bottom-up, as the dataset's files
        lines.append(" ".join(f"{x:.{decimals}f} {y:.{decimals}f}" for x, y in pts))
    return "".join(line + "\n" for line in lines)


def culane_lines_path(file: str, out_dir: str | Path) -> Path:
    """Where the ``.lines.txt`` of frame ``file`` (``driver_x/v.MP4/00000.jpg``) goes under ``out_dir``.

    The dataset's own layout (``out_dir/driver_x/v.MP4/00000.lines.txt``), so the official
    evaluator, given ``out_dir`` as its detection root and the dataset's list files, finds
    every prediction. A leading slash (CULane's list files have one) is accepted; a path
    that would leave ``out_dir`` is an error.
    """
    rel = PurePosixPath(str(file).replace("\\", "/").lstrip("/"))
    if not rel.parts or ".." in rel.parts:
        raise ValueError(f"frame path {file!r} must be a relative path inside the dataset")
    return Path(out_dir).joinpath(*rel.parts).with_suffix(".lines.txt")


def write_culane_lines(pred_lanes: Sequence[LaneLike], file: str, out_dir: str | Path) -> Path:
    """Write one frame's predicted lanes (original 1640x590 pixels) as CULane ``.lines.txt``.

    Returns the path written (see :func:`culane_lines_path`); a frame without lanes gets
    an empty file, which the evaluator reads as "no lanes predicted".
    """
    path = culane_lines_path(file, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(culane_lines_text(pred_lanes))
    return path


@register_type("CulaneLinesWriter")
class CulaneLinesWriter:
    """The predictors' prediction writer (``prediction_writer`` in the config): every frame's
    predicted lanes as CULane ``.lines.txt`` under ``<work-dir>/predict/<stage>/``, in the
    dataset's own layout, so CULane's official C++ evaluator runs on them unchanged."""

    def __call__(self, predictions: Mapping[str, Any], batch: Mapping[str, Any], out_dir: Path) -> None:
        for lanes, file in zip(predictions["pred_lanes"], batch["file"], strict=True):
            write_culane_lines(lanes, file, out_dir)
