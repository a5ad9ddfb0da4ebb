"""The host code between MOTR's two graphs (hat_motr.sequence), on scripted graphs and on the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hat.errors import UserError
from hat_motr.sequence import DETECT_GRAPH, QIM_GRAPH, MotrSequenceRunner
from hat_motr.tracker import MotTracker

T, D, WIDTH = 4, 6, 8
H, W = 64, 96  # the network input
ORIG = (180, 320)  # the original frame (h, w)


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


class ScriptedGraphs:
    """Graph 1 reports one person at a scripted box in detect slot 2 (frame 1) and then in
    whatever track slot carries it; graph 2 returns its input query plus one."""

    def __init__(self, boxes: list[list[float]]) -> None:
        self.boxes = boxes
        self.calls: list[tuple[str, dict[str, torch.Tensor]]] = []
        self.frame = 0

    def __call__(self, graph: str, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls.append((graph, {k: v.clone() for k, v in feeds.items()}))
        if graph == QIM_GRAPH:
            return {"next_query_pos": feeds["track_query_pos"] + 1.0}
        assert graph == DETECT_GRAPH
        logits = torch.full((1, T + D, 1), logit(0.05))
        boxes = torch.full((1, T + D, 4), 0.5)
        slot = T + 2
        tracked = torch.nonzero(feeds["track_mask"][0] > 0).flatten()
        if len(tracked):
            slot = int(tracked[0])
        logits[0, slot, 0] = logit(0.9)
        boxes[0, slot] = torch.tensor(self.boxes[self.frame])
        self.frame += 1
        hidden = torch.arange(T + D, dtype=torch.float32).reshape(1, -1, 1).expand(1, -1, WIDTH) * 10
        query = torch.arange(T + D, dtype=torch.float32).reshape(1, -1, 1).expand(1, -1, WIDTH).clone()
        return {"logits": logits, "boxes": boxes, "hidden": hidden, "query_pos": query}


def frame_batch(frame: int, seq: str = "MOT17-02-FRCNN", first: bool | None = None) -> dict:
    return {
        "img": torch.zeros(1, 3, H, W),
        "seq": [seq],
        "frame": torch.tensor([frame]),
        "first_frame": torch.tensor([frame == 1 if first is None else first]),
        "scale_factor": [(W / ORIG[1], H / ORIG[0])],
        "ori_shape": [ORIG],
    }


def test_a_detection_becomes_a_track_carried_through_the_qim_with_its_box() -> None:
    runner = MotrSequenceRunner(T, WIDTH)
    graphs = ScriptedGraphs([[0.5, 0.5, 0.25, 0.5], [0.55, 0.5, 0.25, 0.5], [0.6, 0.5, 0.25, 0.5]])
    first = runner(graphs, frame_batch(1))
    assert first["track_ids"][0].tolist() == [1]
    # cx 0.5 * 320 = 160, w 0.25 * 320 = 80; cy 0.5 * 180 = 90, h 90: back in the original pixels
    np.testing.assert_allclose(first["track_boxes"][0].numpy(), [[120, 45, 200, 135]], atol=1e-3)
    assert graphs.calls[0][0] == DETECT_GRAPH and graphs.calls[0][1]["track_mask"].sum() == 0
    graph, qim_feeds = graphs.calls[1]
    assert graph == QIM_GRAPH and qim_feeds["track_mask"][0].tolist() == [1, 0, 0, 0]
    assert torch.equal(qim_feeds["track_hidden"][0, 0], torch.full((WIDTH,), float(10 * (T + 2))))  # detect slot 2
    second = runner(graphs, frame_batch(2))
    detect = graphs.calls[2][1]
    assert detect["track_mask"][0].tolist() == [1, 0, 0, 0]
    # the slot's next query is the QIM's output, its reference box the box of the frame before
    assert torch.equal(detect["track_query_pos"][0, 0], torch.full((WIDTH,), float(T + 2) + 1.0))
    torch.testing.assert_close(detect["track_ref_boxes"][0, 0], torch.tensor([0.5, 0.5, 0.25, 0.5]))
    assert second["track_ids"][0].tolist() == [1]  # the same identity, from its track slot
    assert float(second["track_boxes"][0][0, 0]) == pytest.approx(0.55 * 320 - 40, abs=1e-3)


def test_a_new_sequence_resets_and_out_of_order_frames_are_refused() -> None:
    runner = MotrSequenceRunner(T, WIDTH)
    graphs = ScriptedGraphs([[0.5, 0.5, 0.25, 0.5]] * 4)
    runner(graphs, frame_batch(1))
    with pytest.raises(UserError, match="frame by frame.*frame 3 after MOT17-02-FRCNN frame 1"):
        runner(graphs, frame_batch(3))
    graphs.frame = 0
    again = runner(graphs, frame_batch(1, seq="MOT17-04-FRCNN"))
    assert again["track_ids"][0].tolist() == [1]  # identities restart at 1 with the sequence
    assert graphs.calls[-2][1]["track_mask"].sum() == 0  # and no track was carried over
    with pytest.raises(UserError, match="one frame at a time"):
        runner(graphs, {**frame_batch(2), "img": torch.zeros(2, 3, H, W)})


def test_no_tracks_no_qim_and_the_tracker_must_fit_the_slots() -> None:
    class Nothing(ScriptedGraphs):
        def __call__(self, graph, feeds):
            out = super().__call__(graph, feeds)
            if graph == DETECT_GRAPH:
                out["logits"] = torch.full_like(out["logits"], logit(0.1))
            return out

    runner = MotrSequenceRunner(T, WIDTH)
    graphs = Nothing([[0.5, 0.5, 0.2, 0.2]] * 2)
    out = runner(graphs, frame_batch(1))
    assert out["track_ids"][0].numel() == 0 and [c[0] for c in graphs.calls] == [DETECT_GRAPH]
    with pytest.raises(ValueError, match="4 track slots but the graphs 5"):
        MotrSequenceRunner(5, WIDTH, MotTracker(num_track_slots=4))


def test_the_model_in_eval_tracks_a_sequence_with_the_same_runner() -> None:
    from tests.motr.tiny_model import IMAGE, QUERIES, TRACKS, tiny

    model = tiny().eval()
    assert model.num_queries == QUERIES
    eager = {"num_track_slots": TRACKS, "score_thresh": 0.0, "filter_score_thresh": 0.0, "out_score_thresh": 0.0}
    runner = MotrSequenceRunner(TRACKS, model.d_model, MotTracker(**eager, area_thresh=0.0))
    torch.manual_seed(0)
    frames = [torch.randn(1, 3, *IMAGE).clamp(-2, 2) for _ in range(3)]
    model.tracker = MotTracker(**eager, area_thresh=0.0)
    for index, img in enumerate(frames):
        batch = {**frame_batch(index + 1), "img": img, "scale_factor": [(1.0, 1.0)], "ori_shape": [IMAGE]}
        ours = model(batch)
        theirs = runner(model.run_graph, batch)
        for key in ("track_ids", "track_boxes", "track_scores"):
            torch.testing.assert_close(ours[key][0], theirs[key][0])
    assert len(ours["track_ids"][0]) > 0  # with score_thresh 0 every frame has tracks: the QIM ran


def test_infer_writes_frames_a_video_and_a_strip(tmp_path: Path) -> None:
    import cv2

    from hat_motr.infer import STRIP_NAME, VIDEO_NAME, MotrInferer

    frames = []
    for i in range(3):
        path = tmp_path / "in" / f"{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((*ORIG, 3), 90 + 20 * i, np.uint8))
        frames.append(path)

    class Graphs:
        def __init__(self) -> None:
            self.scripted = ScriptedGraphs([[0.5, 0.5, 0.25, 0.5], [0.52, 0.5, 0.25, 0.5], [0.54, 0.5, 0.25, 0.5]])

        def run_graph(self, graph, feeds):
            return self.scripted(graph, feeds)

    from hat.data.transforms import Normalize, Resize, ToTensor

    inferer = MotrInferer(
        [Resize(size=(H, W), keep_ratio=False), ToTensor(), Normalize(128.0, 128.0)], MotrSequenceRunner(T, WIDTH)
    )
    written = inferer(frames, Graphs(), tmp_path / "out", fps=5)
    names = [p.name for p in written]
    assert names == ["000000_tracks.png", "000001_tracks.png", "000002_tracks.png", VIDEO_NAME, STRIP_NAME]
    drawn = cv2.imread(str(tmp_path / "out" / "000001_tracks.png"))
    assert drawn.shape == (*ORIG, 3) and not np.all(drawn == drawn[0, 0])  # a box was drawn
    video = cv2.VideoCapture(str(tmp_path / "out" / VIDEO_NAME))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert cv2.imread(str(tmp_path / "out" / STRIP_NAME)).shape[1] == 3 * 320
    with pytest.raises(UserError, match="needs both exported graphs"):
        inferer(frames, lambda batch: {}, tmp_path / "out")
