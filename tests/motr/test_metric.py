"""MotMetric: py-motmetrics' numbers, under both protocols, equal to py-motmetrics run on the written files."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from hat_motr.dataset import Mot17FrameDataset, MotFrameCollate
from hat_motr.metrics import REPORTED, MotMetric, MotTracksWriter
from hat_motr.tracker import MotTracker

NUM_SLOTS = 16
collate = MotFrameCollate()


@pytest.fixture(scope="module")
def val_frames(mot_packed: Path) -> list[dict]:
    ds = Mot17FrameDataset(str(mot_packed / "val_lmdb"))
    return [ds[i] for i in range(len(ds))]


def pedestrians(item: dict) -> dict[int, np.ndarray]:
    keep = (item["gt_consider"] == 1) & (item["gt_class"] == 1)
    return dict(zip(item["gt_ids"][keep].tolist(), item["gt_boxes"][keep], strict=True))


def oracle(frames: list[dict]) -> list[dict]:
    """Ground truth through the tracker's output path: a perfect model's slots, frame by frame.

    Each track slot that carries a person scores 0.95 with the person's box while the person
    is in the frame (0.1 once gone); people not yet tracked appear in the detect slots.
    """
    tracker = MotTracker(num_track_slots=NUM_SLOTS)
    carried: dict[int, int] = {}  # track slot -> gt identity
    outputs = []
    for item in frames:
        if item["first_frame"]:
            tracker.reset()
            carried = {}
        people = pedestrians(item)
        ts, tb = np.full(NUM_SLOTS, 0.1), np.zeros((NUM_SLOTS, 4))
        ds, db = np.zeros(NUM_SLOTS), np.zeros((NUM_SLOTS, 4))
        for slot, person in carried.items():
            if person in people:
                ts[slot], tb[slot] = 0.95, people[person]
        new = [p for p in people if p not in carried.values()]
        for k, person in enumerate(new):
            ds[k], db[k] = 0.95, people[person]
        step = tracker.step(ts, tb, ds, db)
        carried = {
            k: (carried[int(s)] if s < NUM_SLOTS else new[int(s) - NUM_SLOTS])
            for k, s in enumerate(step.source)
            if s >= 0
        }
        ids, boxes, scores = step.rows()
        outputs.append({"track_ids": ids, "track_boxes": boxes, "track_scores": scores})
    return outputs


def run_metric(metric: MotMetric, frames: list[dict], outputs: list[dict], batch_size: int = 1) -> dict[str, float]:
    for start in range(0, len(frames), batch_size):
        batch = collate(frames[start : start + batch_size])
        out = {k: [o[k] for o in outputs[start : start + batch_size]] for k in outputs[0]}
        metric.update(batch, out)
    return metric.compute()


def num_targets(frames: list[dict]) -> int:
    return sum(len(pedestrians(f)) for f in frames)


def test_ground_truth_through_the_tracker_scores_perfectly(val_frames: list[dict]) -> None:
    result = run_metric(MotMetric(verbose=False), val_frames, oracle(val_frames))
    people = {(f["seq"], p) for f in val_frames for p in pedestrians(f)}
    for prefix in ("", "toolkit/"):
        assert result[f"{prefix}MOTA"] == 1.0 and result[f"{prefix}IDF1"] == 1.0
        assert result[f"{prefix}IDSW"] == result[f"{prefix}FP"] == result[f"{prefix}FN"] == 0
        assert result[f"{prefix}MT"] == len(people) and result[f"{prefix}ML"] == 0
        assert result[f"{prefix}MOTP"] == pytest.approx(0.0, abs=1e-9)
    assert result["MOTA/MOT17-04-FRCNN"] == 1.0 and result["toolkit/IDF1/MOT17-05-FRCNN"] == 1.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_swapping_two_identities_costs_exactly_their_switches(val_frames: list[dict]) -> None:
    outputs = oracle(val_frames)
    seq = "MOT17-04-FRCNN"
    indices = [i for i, f in enumerate(val_frames) if f["seq"] == seq]
    at = indices[len(indices) // 2]  # swap from this frame on
    rows = dict(zip(outputs[at]["track_ids"].tolist(), outputs[at]["track_boxes"], strict=True))
    before = set(outputs[at - 1]["track_ids"].tolist())
    pair = next(
        (a, b)
        for a in sorted(rows)
        for b in sorted(rows)
        if a < b and a in before and b in before and iou(rows[a], rows[b]) == 0.0
    )
    # Expected: each of the two, tracked before the swap and after it, switches once (at the swap).
    seen_before = {p for i in indices if i < at for p in outputs[i]["track_ids"].tolist()}
    seen_after = {p for i in indices if i >= at for p in outputs[i]["track_ids"].tolist()}
    expected = sum(1 for p in pair if p in seen_before and p in seen_after)
    assert expected == 2
    swap = {pair[0]: pair[1], pair[1]: pair[0]}
    for i in indices:
        if i >= at:
            outputs[i] = {**outputs[i], "track_ids": np.array([swap.get(p, p) for p in outputs[i]["track_ids"]])}
    result = run_metric(MotMetric(verbose=False), val_frames, outputs, batch_size=3)
    for prefix in ("", "toolkit/"):
        assert result[f"{prefix}IDSW"] == expected and result[f"{prefix}IDSW/{seq}"] == expected
        assert result[f"{prefix}FP"] == result[f"{prefix}FN"] == 0
        assert result[f"{prefix}MOTA"] == pytest.approx(1.0 - expected / num_targets(val_frames))
        assert result[f"{prefix}IDF1"] < 1.0 and result[f"{prefix}IDF1/MOT17-02-FRCNN"] == 1.0


def noisy(frames: list[dict], seed: int = 0) -> list[dict]:
    """Imperfect tracks: jittered boxes, dropped rows, false alarms (some on the static person), an id change."""
    rng = np.random.default_rng(seed)
    outputs = oracle(frames)
    for i, (item, out) in enumerate(zip(frames, outputs, strict=True)):
        keep = rng.random(len(out["track_ids"])) > 0.1
        ids, boxes = out["track_ids"][keep], out["track_boxes"][keep] + rng.normal(0, 2.0, (int(keep.sum()), 4))
        extra_ids, extra = [], []
        static = item["gt_boxes"][item["gt_class"] == 7]
        if len(static) and i % 2:
            extra_ids.append(900)
            extra.append(static[0] + rng.normal(0, 1.0, 4))
        if rng.random() < 0.3:
            x, y = rng.uniform(0, 280), rng.uniform(0, 120)
            extra_ids.append(901 + i)
            extra.append(np.array([x, y, x + 20, y + 50]))
        if item["frame"] > 12:
            ids = np.where(ids == 3, 77, ids)
        outputs[i] = {
            "track_ids": np.concatenate([ids, np.array(extra_ids, dtype=np.int64)]),
            "track_boxes": np.concatenate([boxes, np.array(extra).reshape(-1, 4)]),
            "track_scores": rng.uniform(0.7, 1.0, len(ids) + len(extra_ids)),
        }
    return outputs


def test_the_metric_equals_py_motmetrics_run_on_the_written_files(
    val_frames: list[dict], mot_packed: Path, tmp_path: Path
) -> None:
    import motmetrics as mm
    from motmetrics.apps import eval_motchallenge, evaluateTracking

    tracks = tmp_path / "work" / "tracks"
    metric = MotMetric(tracks_dir=str(tracks), verbose=False)
    result = run_metric(metric, val_frames, noisy(val_frames), batch_size=2)
    assert 0.3 < result["MOTA"] < 0.99 and result["FP"] > 0 and result["FN"] > 0 and result["IDSW"] > 0
    assert result["toolkit/FP"] > result["FP"]  # the boxes on the static person count only there

    # py-motmetrics on its own, on the files: the pack's val ground truth and the written results.
    gt_root = mot_packed / "val_gt"
    seqs = sorted(p.name for p in gt_root.iterdir())
    assert sorted(p.stem for p in tracks.glob("*.txt")) == seqs
    mh = mm.metrics.create()
    ts = OrderedDict((s, mm.io.loadtxt(str(tracks / f"{s}.txt"), fmt="mot16")) for s in seqs)
    gts = OrderedDict(
        (s, (mm.io.loadtxt(str(gt_root / s / "gt" / "gt.txt"), fmt="mot16"), str(gt_root / s / "seqinfo.ini")))
        for s in seqs
    )
    accs, anas, names = evaluateTracking.compare_dataframes(gts, ts, "", 0.5)
    motchallenge = mh.compute_many(accs, anas=anas, names=names, metrics=list(REPORTED), generate_overall=True)
    gts_considered = OrderedDict(
        (s, mm.io.loadtxt(str(gt_root / s / "gt" / "gt.txt"), fmt="mot15-2D", min_confidence=1)) for s in seqs
    )
    ts = OrderedDict((s, mm.io.loadtxt(str(tracks / f"{s}.txt"), fmt="mot15-2D")) for s in seqs)
    accs, names = eval_motchallenge.compare_dataframes(gts_considered, ts)
    toolkit = mh.compute_many(accs, names=names, metrics=list(REPORTED), generate_overall=True)

    for prefix, summary in (("", motchallenge), ("toolkit/", toolkit)):
        for mm_name, name in REPORTED.items():
            assert result[f"{prefix}{name}"] == float(summary.loc["OVERALL", mm_name]), (prefix, name)
            for s in seqs:
                assert result[f"{prefix}{name}/{s}"] == float(summary.loc[s, mm_name]), (prefix, name, s)
    assert set(metric.summaries) == {"motchallenge", "toolkit"}

    # The prediction writer leaves the same files.
    predict = tmp_path / "predict"
    writer, outputs = MotTracksWriter(), noisy(val_frames)
    for item, out in zip(val_frames, outputs, strict=True):
        writer({k: [v] for k, v in out.items()}, collate([item]), predict)
    assert {p.name: p.read_text() for p in predict.iterdir()} == {p.name: p.read_text() for p in tracks.iterdir()}


def test_distractors_only_cost_false_positives_under_the_toolkit_protocol(val_frames: list[dict]) -> None:
    outputs = oracle(val_frames)
    frames_with_static = 0
    for item, out in zip(val_frames, outputs, strict=True):
        static = item["gt_boxes"][item["gt_class"] == 7]
        if len(static):
            frames_with_static += 1
            out["track_ids"] = np.append(out["track_ids"], 500)
            out["track_boxes"] = np.concatenate([out["track_boxes"], static[:1]])
            out["track_scores"] = np.append(out["track_scores"], 0.9)
    result = run_metric(MotMetric(verbose=False), val_frames, outputs)
    assert frames_with_static == len(val_frames)
    assert result["FP"] == 0 and result["MOTA"] == 1.0  # MOTChallenge: matched to a distractor, removed
    assert result["toolkit/FP"] == frames_with_static
    assert result["toolkit/MOTA"] == pytest.approx(1.0 - frames_with_static / num_targets(val_frames))


def test_a_sequence_without_output_misses_everything(val_frames: list[dict], capsys) -> None:
    outputs = oracle(val_frames)
    for item, out in zip(val_frames, outputs, strict=True):
        if item["seq"] == "MOT17-02-FRCNN":
            out.update(track_ids=np.zeros(0, np.int64), track_boxes=np.zeros((0, 4)), track_scores=np.zeros(0))
    result = run_metric(MotMetric(), val_frames, outputs)
    missed = num_targets([f for f in val_frames if f["seq"] == "MOT17-02-FRCNN"])
    assert result["MOTA/MOT17-02-FRCNN"] == 0.0 and result["FN"] == result["toolkit/FN"] == missed
    assert result["MOTA/MOT17-05-FRCNN"] == 1.0
    assert MotMetric(verbose=False).compute() == pytest.approx({"MOTA": float("nan")}, nan_ok=True)
