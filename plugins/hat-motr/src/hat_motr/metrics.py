"""MOTA, IDF1 and the CLEAR MOT counts by py-motmetrics, under two ground-truth protocols.

:class:`MotMetric` collects, frame by frame, the tracker's output rows and the frame's
ground-truth rows (from the batch, as packed), writes them as MOTChallenge files and
hands the files to py-motmetrics' own functions. Nothing of the evaluation is
re-implemented here; the two protocols are py-motmetrics' two evaluation apps:

``MOTChallenge`` (the headline: the numbers MOTChallenge's devkit reports)
    ``motmetrics/apps/evaluateTracking.py``: the ground truth read with
    ``mm.io.loadtxt(gt.txt, fmt="mot16")`` (every row), then
    ``mm.utils.CLEAR_MOT_M(gt, results, seqinfo.ini, "iou", distth=0.5)``, which first
    drops the predictions matched (IoU >= 0.5, ``mm.preprocess.preprocessResult``) to a
    distractor (person on vehicle, static person, distractor, reflection) and then
    scores the rest against the pedestrians (class 1) with consider 1.

``toolkit`` (the reference toolkit's protocol, MOTR's and ByteTrack's evaluation code)
    ``motmetrics/apps/eval_motchallenge.py``: the ground truth read with
    ``mm.io.loadtxt(gt.txt, fmt="mot15-2D", min_confidence=1)`` (every row with consider
    1, whatever its class), then ``mm.utils.compare_to_groundtruth(gt, results, "iou",
    distth=0.5)``.

Matching is by IoU distance with ``max_iou`` 0.5 (``mm.distances.iou_matrix(...,
max_iou=0.5)``: a pair is matched only at IoU >= 0.5) in both. ``compute()`` returns, for
each protocol, ``MOTA``, ``IDF1``, ``MOTP``, ``IDSW``, ``FP``, ``FN``, ``MT``, ``ML``
over all sequences (``compute_many(..., generate_overall=True)``) and per sequence
(``MOTA/<seq>``, ...): the MOTChallenge protocol under the plain names (``MOTA`` is the
headline), the toolkit protocol under ``toolkit/``. ``MOTP`` is py-motmetrics' own: the
mean IoU *distance* (1 - IoU) of the matches, lower is better (MOTChallenge prints
``(1 - MOTP) * 100``). With ``verbose`` both summaries are printed as py-motmetrics
renders them.

With ``tracks_dir`` (e.g. ``${work_dir}/tracks``) the results are also written there,
``<tracks_dir>/<seq>.txt`` in MOTChallenge's format (``frame,id,left,top,width,height,
score,-1,-1,-1``), each file atomically: with the pack's ``<split>_gt`` folder they are
what py-motmetrics' apps and TrackEval take, unchanged.

What ``update(batch, outputs)`` reads, per frame of the batch (lists or per-frame tensors):

``batch``: ``seq`` (str), ``frame`` (int, from 1), ``num_frames`` (frames of the
sequence in the split), ``width``, ``height``, ``frame_rate``, and the ground truth
``gt_boxes`` ((N, 4) x1, y1, x2, y2 original pixels), ``gt_ids``, ``gt_consider``,
``gt_class``, ``gt_visibility`` (as :class:`~hat_motr.dataset.Mot17FrameDataset` gives them).

``outputs``: ``track_ids`` ((M,) identities; rows with an id < 0 are padding and
skipped), ``track_boxes`` ((M, 4) x1, y1, x2, y2 in original pixels) and optionally
``track_scores`` ((M,)), the post-process's output rows (:meth:`TrackStep.rows
<hat_motr.tracker.TrackStep.rows>`).
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from hat import console, distributed
from hat.metrics import Metric
from hat.registry import register_type
from hat_motr.mot import SeqInfo, format_gt_rows, format_track_rows, write_sequence_gt, write_text_atomic

#: py-motmetrics metric -> the name reported.
REPORTED = {
    "mota": "MOTA",
    "idf1": "IDF1",
    "motp": "MOTP",
    "num_switches": "IDSW",
    "num_false_positives": "FP",
    "num_misses": "FN",
    "mostly_tracked": "MT",
    "mostly_lost": "ML",
}
PROTOCOLS = ("motchallenge", "toolkit")


def _import_mm():
    try:
        import motmetrics as mm
    except ImportError as err:  # a dependency of hat-motr: only a broken install gets here
        raise ImportError("MotMetric needs py-motmetrics: pip install motmetrics==1.4.0") from err
    return mm


def _per_frame(value: Any, count: int, name: str) -> list[Any]:
    """A batch entry as one item per frame (a list, a tuple or a tensor/array with the batch axis first)."""
    if value is None:
        raise KeyError(name)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = [value.item()]
    items = list(value)
    if len(items) != count:
        raise ValueError(f"{name} has {len(items)} entries for a batch of {count} frames")
    return items


def _array(value: Any, dtype: Any, shape: tuple[int, ...] = (-1,)) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def _predicted_tracks(
    batch: Mapping[str, Any], outputs: Mapping[str, Any]
) -> tuple[list[str], list[Any], list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]:
    """The batch's sequences and frame numbers, and per frame its tracks (ids, boxes, scores or None).

    Padding rows (ids below 0) are dropped. What the metric and the tracks writer both read.
    """
    seqs = batch["seq"]
    seqs = [seqs] if isinstance(seqs, str) else list(seqs)
    n = len(seqs)
    frames = _per_frame(batch["frame"], n, "frame")
    ids = _per_frame(outputs["track_ids"], n, "track_ids")
    boxes = _per_frame(outputs["track_boxes"], n, "track_boxes")
    scores = outputs.get("track_scores")
    scores = [None] * n if scores is None else _per_frame(scores, n, "track_scores")
    tracks = []
    for k in range(n):
        pred_ids = _array(ids[k], np.int64)
        pred_boxes = _array(boxes[k], np.float64, (-1, 4))
        pred_scores = None if scores[k] is None else _array(scores[k], np.float64)
        num_scores = len(pred_ids) if pred_scores is None else len(pred_scores)
        if not len(pred_ids) == len(pred_boxes) == num_scores:
            raise ValueError(
                f"frame {k} of the batch has {len(pred_ids)} track ids, {len(pred_boxes)} boxes and {num_scores} scores"
            )
        real = pred_ids >= 0
        tracks.append((pred_ids[real], pred_boxes[real], None if pred_scores is None else pred_scores[real]))
    return seqs, frames, tracks


def load_mot(text: str, **kwargs: Any):
    """``mm.io.loadtxt`` of MOT text (an empty text gives py-motmetrics' empty frame with the same columns)."""
    mm = _import_mm()
    if text.strip():
        return mm.io.loadtxt(io.StringIO(text), fmt=kwargs.pop("fmt", "mot16"), **kwargs)
    import pandas as pd

    index = pd.MultiIndex.from_arrays([[], []], names=["FrameId", "Id"])
    columns = ["X", "Y", "Width", "Height", "Confidence", "ClassId", "Visibility"]
    return pd.DataFrame({c: pd.Series([], dtype=float) for c in columns}, index=index)


def evaluate_sequences(sequences: Mapping[str, tuple[str, str, Path]], max_iou: float = 0.5) -> dict[str, Any]:
    """Both protocols over ``{seq: (gt text, results text, seqinfo.ini path)}``: ``{protocol: summary}``.

    Each summary is py-motmetrics' ``compute_many`` DataFrame (a row per sequence and
    ``OVERALL``), computed with its own functions (see the module docstring).
    """
    mm = _import_mm()
    mh = mm.metrics.create()
    names = list(sequences)
    accs: dict[str, list[Any]] = {p: [] for p in PROTOCOLS}
    anas = []
    for name in names:
        gt_text, ts_text, ini = sequences[name]
        gt_all, ts = load_mot(gt_text, fmt="mot16"), load_mot(ts_text, fmt="mot16")
        acc, ana = mm.utils.CLEAR_MOT_M(gt_all, ts, str(ini), "iou", distth=max_iou)
        accs["motchallenge"].append(acc)
        anas.append(ana)
        gt_considered = load_mot(gt_text, fmt="mot15-2D", min_confidence=1)
        ts = load_mot(ts_text, fmt="mot15-2D")
        accs["toolkit"].append(mm.utils.compare_to_groundtruth(gt_considered, ts, "iou", distth=max_iou))
    metrics = list(REPORTED)
    return {
        "motchallenge": mh.compute_many(
            accs["motchallenge"], anas=anas, metrics=metrics, names=names, generate_overall=True
        ),
        "toolkit": mh.compute_many(accs["toolkit"], metrics=metrics, names=names, generate_overall=True),
    }


def render(summary: Any) -> str:
    """A summary as py-motmetrics prints it (MOTChallenge's column names)."""
    mm = _import_mm()
    return mm.io.render_summary(
        summary, formatters=mm.metrics.create().formatters, namemap=mm.io.motchallenge_metric_names
    )


@register_type("MotMetric")
class MotMetric(Metric):
    """MOTA/IDF1 by py-motmetrics, MOTChallenge protocol as the headline (see the module docstring)."""

    name = "MOTA"
    higher_is_better = True

    def __init__(self, tracks_dir: str | None = None, max_iou: float = 0.5, verbose: bool = True) -> None:
        super().__init__()
        if not 0.0 < max_iou <= 1.0:
            raise ValueError(f"max_iou is an IoU distance in (0, 1], got {max_iou}")
        self.tracks_dir = None if tracks_dir in (None, "") else Path(str(tracks_dir))
        self.max_iou = float(max_iou)
        self.verbose = bool(verbose)
        #: py-motmetrics' summaries of the last compute(), by protocol.
        self.summaries: dict[str, Any] = {}
        # One entry per frame: plain data, gathered from every rank.
        self.add_state("frames", [], reduce="cat")

    def update(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        seqs, frames, tracks = _predicted_tracks(batch, outputs)
        n = len(seqs)
        num_frames = _per_frame(batch["num_frames"], n, "num_frames")
        width = _per_frame(batch["width"], n, "width")
        height = _per_frame(batch["height"], n, "height")
        rate = _per_frame(batch.get("frame_rate", [30] * n), n, "frame_rate")
        gt = {k: _per_frame(batch[k], n, k) for k in ("gt_boxes", "gt_ids", "gt_consider", "gt_class", "gt_visibility")}
        for k, (pred_ids, pred_boxes, pred_scores) in enumerate(tracks):
            if pred_scores is None:
                pred_scores = np.ones(len(pred_ids))
            self.frames.append(
                {
                    "seq": str(seqs[k]),
                    "frame": int(_scalar(frames[k])),
                    "num_frames": int(_scalar(num_frames[k])),
                    "width": int(_scalar(width[k])),
                    "height": int(_scalar(height[k])),
                    "frame_rate": int(_scalar(rate[k])),
                    "pred_ids": pred_ids,
                    "pred_boxes": pred_boxes,
                    "pred_scores": pred_scores,
                    "gt_boxes": _array(gt["gt_boxes"][k], np.float64, (-1, 4)),
                    "gt_ids": _array(gt["gt_ids"][k], np.int64),
                    "gt_consider": _array(gt["gt_consider"][k], np.int64),
                    "gt_class": _array(gt["gt_class"][k], np.int64),
                    "gt_visibility": _array(gt["gt_visibility"][k], np.float64),
                }
            )

    def sequence_files(self) -> dict[str, tuple[SeqInfo, list[str], list[str]]]:
        """``{seq: (seqinfo, gt lines, result lines)}`` of the frames seen, sequences by name, frames in order.

        A frame seen twice (a repeated sample) counts once.
        """
        by_seq: dict[str, dict[int, dict[str, Any]]] = {}
        for entry in self.frames:
            by_seq.setdefault(entry["seq"], {}).setdefault(entry["frame"], entry)
        out = {}
        for seq in sorted(by_seq):
            frames = by_seq[seq]
            first = frames[min(frames)]
            info = SeqInfo(
                seq,
                "img1",
                first["frame_rate"],
                max(first["num_frames"], max(frames)),
                first["width"],
                first["height"],
                ".jpg",
            )
            gt_lines: list[str] = []
            ts_lines: list[str] = []
            for frame in sorted(frames):
                e = frames[frame]
                gt_lines += format_gt_rows(
                    [frame] * len(e["gt_ids"]),
                    e["gt_ids"],
                    e["gt_boxes"],
                    e["gt_consider"],
                    e["gt_class"],
                    e["gt_visibility"],
                )
                ts_lines += format_track_rows(frame, e["pred_ids"], e["pred_boxes"], e["pred_scores"])
            out[seq] = (info, gt_lines, ts_lines)
        return out

    def write_tracks(self, tracks_dir: Path) -> list[Path]:
        """``<tracks_dir>/<seq>.txt`` of every sequence seen, each written atomically."""
        written = []
        for seq, (_, _, ts_lines) in self.sequence_files().items():
            path = Path(tracks_dir) / f"{seq}.txt"
            write_text_atomic(path, "".join(f"{line}\n" for line in ts_lines))
            written.append(path)
        return written

    def _compute(self) -> dict[str, float]:
        files = self.sequence_files()
        if not files:
            return {"MOTA": float("nan")}
        if self.tracks_dir is not None and distributed.is_main():
            self.write_tracks(self.tracks_dir)
        with tempfile.TemporaryDirectory(prefix="hat-motr-eval-") as tmp:
            sequences = {}
            for seq, (info, gt_lines, ts_lines) in files.items():
                folder = write_sequence_gt(Path(tmp), info, gt_lines)  # preprocessResult reads seqinfo.ini
                sequences[seq] = (
                    "".join(f"{x}\n" for x in gt_lines),
                    "".join(f"{x}\n" for x in ts_lines),
                    folder / "seqinfo.ini",
                )
            self.summaries = evaluate_sequences(sequences, self.max_iou)
        if self.verbose and distributed.is_main():
            for protocol in PROTOCOLS:
                label = "MOTChallenge protocol (headline)" if protocol == "motchallenge" else "toolkit protocol"
                console.info(f"MOT17 tracking, {label}:\n{render(self.summaries[protocol])}")
        result: dict[str, float] = {}
        for protocol in PROTOCOLS:
            prefix = "" if protocol == "motchallenge" else "toolkit/"
            summary = self.summaries[protocol]
            for mm_name, name in REPORTED.items():
                result[f"{prefix}{name}"] = float(summary.loc["OVERALL", mm_name])
            for seq in files:
                for mm_name, name in REPORTED.items():
                    result[f"{prefix}{name}/{seq}"] = float(summary.loc[seq, mm_name])
        return result

    def __repr__(self) -> str:
        return f"MotMetric(tracks_dir={self.tracks_dir!r}, max_iou={self.max_iou}, verbose={self.verbose})"


@register_type("MotTracksWriter")
class MotTracksWriter:
    """``prediction_writer``: appends each frame's output rows to ``<out_dir>/<seq>.txt`` (MOTChallenge format).

    Core empties ``<work-dir>/predict/<stage>/`` before a run and calls this per batch,
    so each stage leaves result files an outside evaluator reads unchanged. Reads the
    same keys as :class:`MotMetric`.
    """

    def __call__(self, predictions: Mapping[str, Any], batch: Mapping[str, Any], out_dir: Path) -> None:
        seqs, frames, tracks = _predicted_tracks(batch, predictions)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for k, (pred_ids, pred_boxes, pred_scores) in enumerate(tracks):
            lines = format_track_rows(int(_scalar(frames[k])), pred_ids, pred_boxes, pred_scores)
            path = Path(out_dir) / f"{seqs[k]}.txt"
            with path.open("a") as f:
                f.writelines(f"{line}\n" for line in lines)
