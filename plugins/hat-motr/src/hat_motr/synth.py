"""Synthetic MOT17: walking figures in MOT17's own raw layout, for the demo and the tests.

The real dataset cannot be downloaded here, so this writes what the packer reads::

    <dst>/train/MOT17-<nn>-<DPM|FRCNN|SDP>/seqinfo.ini
    <dst>/train/MOT17-<nn>-<det>/img1/000001.jpg ...      the same images in the three copies
    <dst>/train/MOT17-<nn>-<det>/gt/gt.txt                the same ground truth in the three copies
    <dst>/train/MOT17-<nn>-<det>/det/det.txt              each copy its own "detector's" boxes

Each sequence is a street seen from the side on a plain, softly shaded background:
pedestrians (class 1, consider 1) walk left or right at their own speed, some already in
view at frame 1, the others entering at an image edge later; all leave through the edge
they walk to. Each identity looks its own way (a distinct shirt hue, trouser shade and
head shape), so a small network can keep them apart. Figures lower in the image are
nearer and bigger, and are drawn over the farther ones: walkers crossing each other
occlude one another, and each gt row's visibility is the fraction of its box that is
inside the image and not covered by the box of a nearer figure (as MOT17's visibility
counts occlusion and truncation). Rows of other classes are there as in the real files,
with consider 0: a seated static person (class 7), a poster of a person on the back wall
(distractor, class 8) and a faded reflection walking in a shop window (class 12).
Boxes are whole pixels, as in MOT17's ``gt.txt``, written sorted by identity then frame.

Sequences have ``frames_per_sequence + k`` frames (k = 0, 1, ...: odd and even lengths
for the half split). Every sequence draws from its own generator, seeded by ``(seed,
sequence)``: the output is identical for a seed.
"""

from __future__ import annotations

import colorsys
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from hat import console
from hat.errors import UserError
from hat_motr.mot import DETECTORS, SeqInfo, write_text_atomic

#: MOT17's training sequence numbers, used in order for the synthetic ones.
SEQUENCE_NUMBERS = (2, 4, 5, 9, 10, 11, 13)
_JPEG_QUALITY = 92
#: Classes of the non-pedestrian rows, all with consider 0.
STATIC_PERSON, DISTRACTOR, REFLECTION = 7, 8, 12


def sequence_name(index: int, detector: str) -> str:
    """``MOT17-02-FRCNN`` for the first sequence, and so on through MOT17's training numbers."""
    return f"MOT17-{SEQUENCE_NUMBERS[index]:02d}-{detector}"


def generate_mot17(
    dst: Path,
    *,
    seed: int,
    num_sequences: int = 3,
    frames_per_sequence: int = 60,
    width: int = 320,
    height: int = 180,
    people_per_sequence: int = 7,
    frame_rate: int = 30,
) -> None:
    """Write ``num_sequences`` synthetic MOT17 training sequences (three detector copies each) under ``dst``.

    Refuses a ``dst`` that already holds MOT17 sequences (stale frames of an earlier run
    would silently mix in); a run that fails leaves nothing behind.
    """
    if not 1 <= num_sequences <= len(SEQUENCE_NUMBERS):
        raise UserError(
            f"synthetic MOT17 has 1 to {len(SEQUENCE_NUMBERS)} sequences, got {num_sequences}",
            hint="pass --num-sequences between 1 and 7",
        )
    if frames_per_sequence < 4:
        raise UserError(
            f"a synthetic sequence needs at least 4 frames (two per half), got {frames_per_sequence}",
            hint="raise --frames-per-sequence",
        )
    if width < 64 or height < 48:
        raise UserError(f"frames of {width}x{height} are too small for walking figures", hint="use at least 64x48")
    if people_per_sequence < 1:
        raise UserError("a synthetic sequence needs at least one pedestrian", hint="raise --people-per-sequence")
    dst = Path(dst)
    if dst.exists() and any((dst / "train").glob("MOT17-*")):
        raise UserError(
            f"{dst} already holds MOT17 sequences (train/MOT17-*)",
            hint="choose another --dst, or remove the old synthetic data first",
        )
    tmp = dst / f".synth-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "train").mkdir(parents=True)
        with console.progress() as bar:
            task = bar.add_task("synth mot17", total=num_sequences)
            for index in range(num_sequences):
                rng = np.random.default_rng([seed % 2**64, index])
                _write_sequence(
                    tmp / "train",
                    index,
                    rng,
                    num_frames=frames_per_sequence + index,
                    width=width,
                    height=height,
                    num_people=people_per_sequence,
                    frame_rate=frame_rate,
                )
                bar.advance(task)
        (dst / "train").mkdir(parents=True, exist_ok=True)
        for child in sorted((tmp / "train").iterdir()):
            child.rename(dst / "train" / child.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the scene -------------------------------------------------------------------------------
@dataclass
class Figure:
    """A person-like figure: its identity, class and look, and its box in every frame it is in view."""

    ident: int
    cls: int
    shirt: tuple[float, float, float]
    trousers: tuple[float, float, float]
    head: tuple[float, float, float]
    hat: int  # 0 none, 1 cap, 2 round hat
    kind: str  # "walker", "seated", "poster", "reflection"
    boxes: dict[int, tuple[int, int, int, int]]  # frame -> x, y, w, h (whole pixels, 0-based)
    phase: float = 0.0


def _palette(count: int, rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """``count`` shirt colours (BGR) of hues spread evenly around the circle, from a random start."""
    start = rng.uniform(0, 1)
    colours = []
    for k in range(count):
        hue = (start + k / max(count, 1)) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 0.95), rng.uniform(0.7, 0.95))
        colours.append((255 * b, 255 * g, 255 * r))
    return colours


def _walkers(
    rng: np.random.Generator, num_frames: int, width: int, height: int, count: int
) -> list[dict[int, tuple[int, int, int, int]]]:
    """Box tracks of ``count`` walkers: a height (nearer = lower and bigger), a direction, a speed."""
    tracks = []
    for k in range(count):
        h = int(rng.uniform(0.32, 0.55) * height)
        w = max(8, int(round(h * rng.uniform(0.36, 0.42))))
        bottom = int(0.62 * height + (h - 0.32 * height) * 1.3)
        bottom = min(bottom, height - 2)
        direction = 1 if rng.random() < 0.5 else -1
        speed = rng.uniform(2.0, 4.5) * width / 320
        in_view_at_start = k < max(2, count // 2)
        if in_view_at_start:  # every other one close to the edge it walks to, so that it leaves in view
            gap = rng.uniform(0.0, 0.12) * width if k % 2 == 0 else rng.uniform(0.3, 0.9) * width
            x = width - w - gap if direction > 0 else gap
            first, x = 1, float(np.clip(x, 0, width - w))
        else:  # enters at the edge it walks away from
            first = int(rng.integers(2, max(3, num_frames - 10)))
            x = float(-w + 1) if direction > 0 else float(width - 1)
        bob = rng.uniform(0.5, 1.5)
        boxes = {}
        for frame in range(first, num_frames + 1):
            xf = x + direction * speed * (frame - first)
            xi = int(round(xf))
            if xi + w <= 0 or xi >= width:  # left the image: gone for good
                if frame > first:
                    break
                continue
            yi = int(round(bottom - h + bob * np.sin(frame * 0.5 + k)))
            boxes[frame] = (xi, yi, w, h)
        tracks.append(boxes)
    return tracks


def _draw_person(img: np.ndarray, fig: Figure, frame: int, alpha: float = 1.0) -> None:
    """A person filling its box: head (and hat), shirt, arms swinging, two striding legs."""
    x, y, w, h = fig.boxes[frame]
    canvas = img if alpha >= 1.0 else img.copy()
    seated = fig.kind == "seated"
    head_r = max(2, int(round(0.11 * h if not seated else 0.16 * h)))
    cx = x + w / 2
    head_c = (int(round(cx)), int(round(y + head_r)))
    torso_top = y + 2 * head_r
    torso_bottom = y + (0.62 * h if not seated else 0.7 * h)
    cv2.rectangle(canvas, (int(x + 0.12 * w), int(torso_top)), (int(x + 0.88 * w), int(torso_bottom)), fig.shirt, -1)
    swing = np.sin(frame * 0.6 + fig.phase) if fig.kind in ("walker", "reflection") else 0.0
    for side in (-1, 1):  # arms
        ax = int(round(cx + side * 0.44 * w))
        cv2.line(
            canvas,
            (ax, int(torso_top + 2)),
            (int(round(ax + side * 0.06 * w + swing * 0.12 * w * side)), int(torso_bottom - 2)),
            fig.shirt,
            max(1, int(0.12 * w)),
        )
    if seated:  # legs forward on a bench
        cv2.rectangle(canvas, (int(x), int(torso_bottom - 0.1 * h)), (int(x + w - 1), int(y + h - 1)), fig.trousers, -1)
    else:
        leg_w = max(1, int(0.2 * w))
        for side in (-1, 1):
            foot_x = cx + side * (0.18 * w + swing * 0.16 * w)
            cv2.line(
                canvas,
                (int(round(cx + side * 0.16 * w)), int(torso_bottom)),
                (int(round(foot_x)), int(y + h - 1 - leg_w // 2)),
                fig.trousers,
                leg_w,
            )
    cv2.circle(canvas, head_c, head_r, fig.head, -1, lineType=cv2.LINE_AA)
    if fig.hat == 1:
        cv2.rectangle(canvas, (head_c[0] - head_r, y), (head_c[0] + head_r, y + head_r // 2), fig.trousers, -1)
    elif fig.hat == 2:
        cv2.ellipse(canvas, head_c, (head_r, head_r), 0, 180, 360, fig.shirt, -1)
    if alpha < 1.0:
        cv2.addWeighted(canvas, alpha, img, 1 - alpha, 0, dst=img)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A pale wall above a pavement, softly shaded: plain enough that the figures stand out."""
    wall = rng.uniform(175, 215, 3)
    ground = wall * rng.uniform(0.75, 0.85)
    img = np.empty((height, width, 3), np.float32)
    horizon = int(0.5 * height)
    t = np.linspace(0, 1, height)[:, None]
    img[:horizon] = (wall * (1.0 - 0.08 * t[:horizon]))[:, None, :]
    img[horizon:] = (ground * (0.95 + 0.08 * t[horizon:]))[:, None, :]
    img[horizon - 1 : horizon + 1] *= 0.8
    return img


def _visibility(boxes: dict[int, tuple[int, int, int, int]], depth: dict[int, float], width: int, height: int):
    """Per identity: the fraction of its box inside the image and not under a nearer figure's box."""
    out = {}
    for ident, (x, y, w, h) in boxes.items():
        mask = np.zeros((h, w), bool)
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
        if x1 > x0 and y1 > y0:
            mask[y0 - y : y1 - y, x0 - x : x1 - x] = True
        for other, (ox, oy, ow, oh) in boxes.items():
            if other == ident or depth[other] <= depth[ident]:
                continue
            ax0, ay0 = max(ox - x, 0), max(oy - y, 0)
            ax1, ay1 = min(ox + ow - x, w), min(oy + oh - y, h)
            if ax1 > ax0 and ay1 > ay0:
                mask[ay0:ay1, ax0:ax1] = False
        out[ident] = float(mask.sum()) / float(w * h)
    return out


def _write_sequence(
    root: Path,
    index: int,
    rng: np.random.Generator,
    *,
    num_frames: int,
    width: int,
    height: int,
    num_people: int,
    frame_rate: int,
) -> None:
    shirts = _palette(num_people + 3, rng)
    figures: list[Figure] = []
    for k, boxes in enumerate(_walkers(rng, num_frames, width, height, num_people)):
        figures.append(
            Figure(
                ident=k + 1,
                cls=1,
                shirt=shirts[k],
                trousers=tuple(float(v) for v in rng.uniform(20, 110, 3)),
                head=tuple(float(v) for v in rng.uniform([60, 110, 150], [110, 170, 230])),
                hat=int(rng.integers(0, 3)),
                kind="walker",
                boxes=boxes,
                phase=float(rng.uniform(0, 6.3)),
            )
        )
    # The other classes, consider 0: a seated person, a poster on the wall, a reflection in a window.
    sh = int(0.28 * height)
    sw = int(0.5 * sh)
    sx = int(rng.uniform(0.1, 0.8) * width)
    seated_box = (sx, int(0.62 * height) - sh + int(0.05 * height), sw, sh)
    ph = int(0.2 * height)
    poster_box = (int(rng.uniform(0.05, 0.85) * width), int(0.12 * height), int(0.42 * ph), ph)
    rh = int(0.22 * height)
    rw = int(0.4 * rh)
    r_dir = 1 if rng.random() < 0.5 else -1
    r_x0 = rng.uniform(0, width - rw)
    reflection = {}
    for frame in range(1, num_frames + 1):
        xi = int(round(r_x0 + r_dir * 1.2 * (frame - 1)))
        if xi + rw <= 0 or xi >= width:
            break
        reflection[frame] = (xi, int(0.08 * height), rw, rh)
    extras = [
        (STATIC_PERSON, "seated", dict.fromkeys(range(1, num_frames + 1), seated_box)),
        (DISTRACTOR, "poster", dict.fromkeys(range(1, num_frames + 1), poster_box)),
        (REFLECTION, "reflection", reflection),
    ]
    for j, (cls, kind, boxes) in enumerate(extras):
        grey = float(rng.uniform(90, 140))
        figures.append(
            Figure(
                ident=num_people + j + 1,
                cls=cls,
                shirt=shirts[num_people + j] if kind != "seated" else (grey, grey, grey + 10),
                trousers=(60.0, 60.0, 70.0),
                head=(120.0, 150.0, 190.0),
                hat=0,
                kind=kind,
                boxes=boxes,
            )
        )

    background = _background(rng, width, height)
    window_top, window_bottom = int(0.08 * height) - 4, int(0.08 * height) + rh + 3
    background[window_top : window_bottom + 1] = (200.0, 185.0, 160.0)  # the shop window of the reflection
    images: list[bytes] = []
    gt_rows: list[tuple[int, int, int, int, int, int, int, int, float]] = []
    for frame in range(1, num_frames + 1):
        img = background.copy()
        img += rng.normal(0, 2.0, img.shape).astype(np.float32)
        img = np.clip(img, 0, 255).astype(np.uint8)
        present = [f for f in figures if frame in f.boxes]
        # Depth: the poster and the reflection are on the wall (farthest), people by their feet.
        depth = {
            f.ident: -1.0 if f.kind in ("poster", "reflection") else float(f.boxes[frame][1] + f.boxes[frame][3])
            for f in present
        }
        for fig in sorted(present, key=lambda f: (depth[f.ident], f.ident)):
            if fig.kind == "poster":
                x, y, w, h = fig.boxes[frame]
                cv2.rectangle(img, (x - 3, y - 3), (x + w + 2, y + h + 2), (235, 235, 235), -1)
                cv2.rectangle(img, (x - 3, y - 3), (x + w + 2, y + h + 2), (70, 70, 70), 1)
            _draw_person(img, fig, frame, alpha=0.4 if fig.kind == "reflection" else 1.0)
        vis = _visibility({f.ident: f.boxes[frame] for f in present}, depth, width, height)
        for fig in present:
            x, y, w, h = fig.boxes[frame]
            consider = 1 if fig.cls == 1 else 0
            gt_rows.append((frame, fig.ident, x + 1, y + 1, w, h, consider, fig.cls, round(vis[fig.ident], 6)))
        ok, jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a synthetic frame as JPEG")
        images.append(jpg.tobytes())
    gt_rows.sort(key=lambda r: (r[1], r[0]))  # MOT17 writes by identity, then frame
    gt_text = "".join(f"{f},{i},{x},{y},{w},{h},{c},{k},{v:g}\n" for f, i, x, y, w, h, c, k, v in gt_rows)

    for det_index, detector in enumerate(DETECTORS):
        name = sequence_name(index, detector)
        folder = root / name
        (folder / "img1").mkdir(parents=True)
        for frame, data in enumerate(images, start=1):
            (folder / "img1" / f"{frame:06d}.jpg").write_bytes(data)
        info = SeqInfo(name, "img1", frame_rate, num_frames, width, height, ".jpg")
        write_text_atomic(folder / "seqinfo.ini", info.to_ini())
        write_text_atomic(folder / "gt" / "gt.txt", gt_text)
        det_rng = np.random.default_rng([int(rng.integers(2**32)), det_index])
        write_text_atomic(folder / "det" / "det.txt", _detections(det_rng, gt_rows, detector, width, height))


def _detections(rng: np.random.Generator, gt_rows: list, detector: str, width: int, height: int) -> str:
    """A detector's ``det.txt``: visible pedestrians found with jittered boxes, plus a few false alarms.

    Scores follow each detector's habit: DPM's are unbounded margins, FRCNN's and SDP's
    probabilities.
    """
    rows = []
    for frame, _, left, top, w, h, _, cls, vis in sorted(gt_rows):
        if cls != 1 or vis < 0.25 or rng.random() < 0.1:
            continue
        jitter = rng.normal(0, 0.04, 4) * np.array([w, h, w, h])
        score = rng.normal(0.8, 0.6) if detector == "DPM" else rng.uniform(0.5, 1.0)
        rows.append((frame, left + jitter[0], top + jitter[1], w + jitter[2], h + jitter[3], score))
    num_frames = max((r[0] for r in gt_rows), default=0)
    for frame in range(1, num_frames + 1):
        if rng.random() < 0.15:
            fh = rng.uniform(0.2, 0.4) * height
            fw = 0.4 * fh
            rows.append((frame, rng.uniform(0, width - fw), rng.uniform(0, height - fh), fw, fh, rng.uniform(0.1, 0.5)))
    rows.sort(key=lambda r: r[0])
    return "".join(f"{f},-1,{x:.2f},{y:.2f},{w:.2f},{h:.2f},{s:.4f},-1,-1,-1\n" for f, x, y, w, h, s in rows)
