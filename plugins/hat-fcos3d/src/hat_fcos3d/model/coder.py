"""FCOS3D's box coding: camera-frame 3D boxes <-> the nine numbers a point regresses.

Frames and conventions (shared with ``hat.nuscenes.geometry``):

* Camera frame: x right, y down, z forward. A box is ``center (x, y, z)``, ``size
  (w, l, h)`` (nuScenes order: width across, length along the heading, height),
  ``yaw`` and ``velocity (vx, vz)`` (the camera-frame velocity without its vertical
  part, which nuScenes does not evaluate).
* ``yaw`` is the rotation about the camera's +y axis that takes +x to the box's length
  direction, i.e. the heading is ``(cos yaw, 0, -sin yaw)``; the box's local y axis is
  ``(sin yaw, 0, cos yaw)`` and its up axis ``(0, -1, 0)``.
* Pixels: ``(u, v) = project(K @ p)``, the intrinsic matrix's own convention (the
  dataset keeps ``K`` consistent with any resize or crop it applies).

A point at pixel ``(px, py)`` of a level with stride ``s`` regresses the code

====  ===================  =========================================================
 0-1  offset ``(dx, dy)``  ``((u - px) / s, (v - py) / s)``: the projected 3D centre
                           relative to the point, in strides (``norm_on_bbox``; in
                           pixels otherwise)
 2    depth                ``log z`` of the centre (log space: scale-free errors and a
                           small, int8-friendly output range)
 3-5  size                 ``log w, log l, log h``
 6    rotation             ``yaw`` itself; the loss compares it through
                           ``sin(pred - target)``, so it is learned modulo pi
 7-8  velocity             ``vx, vz`` in m/s
====  ===================  =========================================================

and a two-way direction class that resolves the pi ambiguity of the rotation:
``dir = floor(((yaw - dir_offset) mod 2 pi) / pi)``. With ``dir_offset = pi / 4`` (the
reference recipe) the bin edges sit at 45 and 225 degrees, away from the headings cars
usually have relative to the camera (0, 90, 180, 270 degrees), so a small rotation
error rarely flips the bin. Decoding inverts both: the regressed angle is reduced into
``[dir_offset, dir_offset + pi)`` and the bin adds ``pi`` or not (see :func:`decode_yaw`).

Everything is torch so the same code serves target building (encode, no grad) and
post-processing (decode).
"""

from __future__ import annotations

import math

import torch

from hat.registry import register_type

#: Code layout: name -> slice into the nine regression channels.
CODE_SLICES: dict[str, slice] = {
    "offset": slice(0, 2),
    "depth": slice(2, 3),
    "size": slice(3, 6),
    "rot": slice(6, 7),
    "velo": slice(7, 9),
}
CODE_SIZE = 9
#: Floor for projected depths of box corners behind the camera (see :func:`boxes_2d_from_3d`).
MIN_CORNER_DEPTH = 0.1
#: Depths and sizes are clamped to this before the log (a degenerate annotation must not give -inf).
MIN_LOG_INPUT = 1e-3


def limit_period(angle: torch.Tensor, offset: float = 0.5, period: float = math.pi) -> torch.Tensor:
    """``angle`` shifted by whole periods into ``[-offset * period, (1 - offset) * period)``."""
    return angle - torch.floor(angle / period + offset) * period


def wrap_angle(angle: torch.Tensor) -> torch.Tensor:
    """Angle in ``[-pi, pi)``."""
    return limit_period(angle, 0.5, 2 * math.pi)


def direction_target(yaw: torch.Tensor, dir_offset: float = math.pi / 4) -> torch.Tensor:
    """The direction bin (0 or 1, int64) of each yaw: which half-turn after ``dir_offset`` it is in."""
    shifted = limit_period(yaw - dir_offset, 0.0, 2 * math.pi)
    return torch.floor(shifted / math.pi).clamp(0, 1).long()


def decode_yaw(rot: torch.Tensor, direction: torch.Tensor, dir_offset: float = math.pi / 4) -> torch.Tensor:
    """Yaw in ``[-pi, pi)`` from a period-pi rotation and its direction bin.

    ``rot`` is only meaningful modulo pi (the sin-difference loss cannot tell ``yaw``
    from ``yaw + pi``): reduce ``rot - dir_offset`` into ``[0, pi)``, add back
    ``dir_offset`` and ``pi`` for bin 1. For ``rot = yaw + k pi`` (any integer k) and
    ``direction = direction_target(yaw)`` this returns ``yaw`` (wrapped).
    """
    base = limit_period(rot - dir_offset, 0.0, math.pi)
    return wrap_angle(base + dir_offset + math.pi * direction.to(rot.dtype))


def project_points(points: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Camera-frame points ``(..., 3)`` -> pixels ``(..., 2)`` (no check that z > 0)."""
    homogeneous = points @ intrinsic.to(points.dtype).transpose(-1, -2)
    return homogeneous[..., :2] / homogeneous[..., 2:3]


def unproject_points(pixels: torch.Tensor, depth: torch.Tensor, intrinsic: torch.Tensor) -> torch.Tensor:
    """Pixels ``(N, 2)`` at camera depths ``(N,)`` -> camera-frame points ``(N, 3)``.

    ``p = z * K^-1 [u, v, 1]``: exact for any intrinsic matrix (skew included).
    """
    ones = torch.ones_like(depth)
    homogeneous = torch.stack([pixels[:, 0], pixels[:, 1], ones], dim=-1) * depth.unsqueeze(-1)
    return homogeneous @ torch.linalg.inv(intrinsic.to(pixels.dtype)).transpose(-1, -2)


def box_corners(center: torch.Tensor, size: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
    """The eight corners ``(N, 8, 3)`` of camera-frame boxes (order: all sign combinations of
    the local axes, length fastest)."""
    cos, sin = torch.cos(yaw), torch.sin(yaw)
    zero = torch.zeros_like(yaw)
    heading = torch.stack([cos, zero, -sin], dim=-1)  # local x (length)
    lateral = torch.stack([sin, zero, cos], dim=-1)  # local y (width)
    up = torch.stack([zero, -torch.ones_like(yaw), zero], dim=-1)  # local z (height)
    signs = torch.tensor(
        [[sx, sy, sz] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)], dtype=center.dtype, device=center.device
    )  # (8, 3)
    half = size / 2  # w, l, h
    offsets = (
        (signs[None, :, 0:1] * half[:, None, 1:2]) * heading[:, None]
        + (signs[None, :, 1:2] * half[:, None, 0:1]) * lateral[:, None]
        + (signs[None, :, 2:3] * half[:, None, 2:3]) * up[:, None]
    )
    return center[:, None] + offsets


def boxes_2d_from_3d(
    center: torch.Tensor,
    size: torch.Tensor,
    yaw: torch.Tensor,
    intrinsic: torch.Tensor,
    image_hw: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The 2D boxes ``(N, 4)`` ``x1, y1, x2, y2`` enclosing the projected corners.

    Corners behind the camera are pulled forward to ``MIN_CORNER_DEPTH`` before
    projecting: their image lies far outside the frame on the correct side, so after
    clipping to ``image_hw`` (height, width) the box reaches the image border there,
    which is what is visible of a box that straddles the image plane.
    """
    if center.shape[0] == 0:
        return center.new_zeros(0, 4)
    corners = box_corners(center, size, yaw)
    corners = torch.cat([corners[..., :2], corners[..., 2:3].clamp(min=MIN_CORNER_DEPTH)], dim=-1)
    pixels = project_points(corners, intrinsic)
    boxes = torch.cat([pixels.amin(dim=1), pixels.amax(dim=1)], dim=-1)
    if image_hw is not None:
        height, width = image_hw
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


@register_type("FCOS3DBBoxCoder")
class FCOS3DBBoxCoder:
    """Encode camera-frame boxes at points into the nine regression codes, and back.

    Args:
        norm_on_bbox: offsets in strides (True, the recipe) or in pixels.
        dir_offset: start of direction bin 0 (radians); pi/4 in the recipe.
    """

    code_size = CODE_SIZE

    def __init__(self, norm_on_bbox: bool = True, dir_offset: float = math.pi / 4) -> None:
        self.norm_on_bbox = bool(norm_on_bbox)
        self.dir_offset = float(dir_offset)

    def encode(
        self,
        center: torch.Tensor,
        size: torch.Tensor,
        yaw: torch.Tensor,
        velocity: torch.Tensor,
        points: torch.Tensor,
        strides: torch.Tensor,
        intrinsic: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``(N, 9)`` and direction bins ``(N,)`` of boxes ``i`` regressed at ``points[i]``.

        ``points`` ``(N, 2)`` pixels and ``strides`` ``(N,)`` are the locations that
        regress each box; ``velocity`` ``(N, 2)`` may hold NaN (passed through).
        """
        pixels = project_points(center, intrinsic)
        offset = pixels - points
        if self.norm_on_bbox:
            offset = offset / strides.to(offset.dtype).unsqueeze(-1)
        codes = torch.cat(
            [
                offset,
                torch.log(center[:, 2:3].clamp(min=MIN_LOG_INPUT)),
                torch.log(size.clamp(min=MIN_LOG_INPUT)),
                wrap_angle(yaw).unsqueeze(-1),
                velocity.to(center.dtype),
            ],
            dim=-1,
        )
        return codes, direction_target(yaw, self.dir_offset)

    def decode(
        self,
        codes: torch.Tensor,
        direction: torch.Tensor,
        points: torch.Tensor,
        strides: torch.Tensor,
        intrinsic: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Boxes from codes ``(N, 9)`` (as the head outputs them, per-level scales applied)
        and direction bins ``(N,)``: ``center (N, 3)``, ``size (N, 3)``, ``yaw (N,)``,
        ``velocity (N, 2)``, plus ``center_2d (N, 2)`` (pixels) and ``depth (N,)``."""
        offset = codes[:, CODE_SLICES["offset"]]
        if self.norm_on_bbox:
            offset = offset * strides.to(codes.dtype).unsqueeze(-1)
        center_2d = points.to(codes.dtype) + offset
        depth = torch.exp(codes[:, 2])
        return {
            "center": unproject_points(center_2d, depth, intrinsic),
            "size": torch.exp(codes[:, CODE_SLICES["size"]]),
            "yaw": decode_yaw(codes[:, 6], direction, self.dir_offset),
            "velocity": codes[:, CODE_SLICES["velo"]],
            "center_2d": center_2d,
            "depth": depth,
        }

    def __repr__(self) -> str:
        return f"FCOS3DBBoxCoder(norm_on_bbox={self.norm_on_bbox}, dir_offset={self.dir_offset:.4f})"
