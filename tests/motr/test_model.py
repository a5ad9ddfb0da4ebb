"""MOTR's model half: the two deploy graphs, the clip criterion, training, float and int8 export."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hat.deploy import OnnxRuntimeBackend, analyze, export_float_onnx, export_onnx
from hat.models import EfficientNet
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig
from hat.registry import Registry
from hat_motr.model import (
    DETECT_INPUTS,
    DETECT_OUTPUTS,
    QIM_INPUTS,
    QIM_OUTPUTS,
    MotrCriterion,
    criterion,
    motr,
)
from tests.motr.tiny_model import D_MODEL, IMAGE, SLOTS, TRACKS, tiny


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These models are many tiny ops: on a shared 2-core machine two threads spend most of
    their time waiting for each other (measured: 1.2 s vs 16 ms for one training step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def detect_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, TRACKS)
    mask[0, :3] = 1.0
    return {
        "img": torch.randn(1, 3, *IMAGE, generator=g).clamp(-2, 2),
        "track_query_pos": torch.randn(1, TRACKS, D_MODEL, generator=g),
        "track_ref_boxes": torch.rand(1, TRACKS, 4, generator=g) * 0.5 + 0.25,
        "track_mask": mask,
    }


def qim_inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, TRACKS)
    mask[0, :5] = 1.0
    return {
        "track_hidden": torch.randn(1, TRACKS, D_MODEL, generator=g),
        "track_query_pos": torch.randn(1, TRACKS, D_MODEL, generator=g),
        "track_mask": mask,
    }


def clip_targets() -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """One clip of two frames, two people moving a little."""
    boxes = [
        torch.tensor([[0.3, 0.4, 0.1, 0.3], [0.7, 0.6, 0.15, 0.4]]),
        torch.tensor([[0.33, 0.4, 0.1, 0.3], [0.68, 0.6, 0.15, 0.4]]),
    ]
    return [boxes], [[torch.tensor([1, 2]), torch.tensor([1, 2])]]


# -- the deploy graphs ----------------------------------------------------------------------


def test_detect_graph_shapes_and_the_eval_forward_is_the_same_graph() -> None:
    deploy = tiny(deploy="detect").eval()
    inputs = detect_inputs()
    with torch.no_grad():
        out = deploy(inputs)
    assert list(out) == list(DETECT_OUTPUTS)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "logits": (1, SLOTS, 1),
        "boxes": (1, SLOTS, 4),
        "hidden": (1, SLOTS, D_MODEL),
        "query_pos": (1, SLOTS, D_MODEL),
    }
    assert bool(((out["boxes"] > 0) & (out["boxes"] < 1)).all())
    model = tiny().eval()
    assert model.state_dict().keys() == deploy.state_dict().keys()
    model.load_state_dict(deploy.state_dict())
    with torch.no_grad():
        again = model(inputs)  # eval: graph 1's raw outputs, same weights
        empty = model({"img": inputs["img"]})  # no track keys: every track slot empty
    for name in DETECT_OUTPUTS:
        torch.testing.assert_close(again[name], out[name])
    assert torch.count_nonzero(empty["query_pos"][0, :TRACKS]) == 0


def test_an_empty_track_slot_changes_no_other_slot() -> None:
    """The mask is an additive bias on the keys: what an empty slot holds cannot leak."""
    model = tiny(deploy="detect").eval()
    inputs = detect_inputs()
    other = dict(inputs)
    other["track_query_pos"] = inputs["track_query_pos"].clone()
    other["track_query_pos"][0, 5:] = 100.0
    other["track_ref_boxes"] = inputs["track_ref_boxes"].clone()
    other["track_ref_boxes"][0, 5:] = 0.9
    with torch.no_grad():
        a, b = model(inputs), model(other)
    valid = torch.cat([torch.arange(3), torch.arange(TRACKS, SLOTS)])
    for name in ("logits", "boxes", "hidden"):
        torch.testing.assert_close(a[name][:, valid], b[name][:, valid])


def test_qim_graph_shapes_and_masking() -> None:
    qim = tiny(deploy="qim").eval()
    inputs = qim_inputs()
    with torch.no_grad():
        out = qim(inputs)
    assert list(out) == list(QIM_OUTPUTS) and tuple(out["next_query_pos"].shape) == (1, TRACKS, D_MODEL)
    other = dict(inputs, track_hidden=inputs["track_hidden"].clone())
    other["track_hidden"][0, 5:] = -50.0  # empty slots
    with torch.no_grad():
        again = qim(other)
    torch.testing.assert_close(again["next_query_pos"][:, :5], out["next_query_pos"][:, :5])
    assert qim.state_dict().keys() == tiny().state_dict().keys()
    with pytest.raises(KeyError, match="QIM graph needs"):
        qim({"track_hidden": inputs["track_hidden"]})


def test_bad_track_shapes_are_refused() -> None:
    inputs = detect_inputs()
    inputs["track_mask"] = torch.ones(1, TRACKS + 1)
    with pytest.raises(ValueError, match="track_mask must be"):
        tiny(deploy=True).eval()(inputs)


# -- the criterion --------------------------------------------------------------------------


def test_matching_picks_the_obvious_assignment() -> None:
    crit = MotrCriterion()
    gt = torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.8, 0.7, 0.2, 0.3]])
    # query 0 near nothing, query 1 on gt 1, query 2 on gt 0, query 3 on gt 1 but scoring low
    boxes = torch.tensor([[0.5, 0.5, 0.05, 0.05], [0.8, 0.7, 0.2, 0.3], [0.21, 0.2, 0.1, 0.1], [0.8, 0.7, 0.2, 0.3]])
    logits = torch.tensor([[0.0], [3.0], [3.0], [-6.0]])
    rows, cols = crit.match(logits, boxes, gt, torch.zeros(2, dtype=torch.long))
    assert rows.tolist() == [1, 2] and cols.tolist() == [1, 0]
    empty_rows, _ = crit.match(logits, boxes, gt[:0], torch.zeros(0, dtype=torch.long))
    assert empty_rows.numel() == 0


def test_track_targets_are_looked_up_by_identity() -> None:
    targets = MotrCriterion.track_targets(torch.tensor([7, -1, 3, 5]), torch.tensor([3, 9, 7]))
    assert targets.tolist() == [2, -1, 0, -1]  # 5 left the frame; -1 is an empty (or false-positive) slot


def test_track_identity_targets_follow_identities_across_frames() -> None:
    """Frame 0: people 7 and 3 are new (Hungarian on detect queries); frame 1 has 3 and a new 9
    (7 left); frame 2 has only 9. A track's target is its own identity's box, wherever it is
    listed, and only new identities are matched to detect queries."""
    model = tiny(track_drop_prob=0.0, fp_insert_prob=0.0).train()
    boxes = [
        torch.tensor([[0.3, 0.3, 0.1, 0.3], [0.7, 0.5, 0.1, 0.3]]),
        torch.tensor([[0.5, 0.5, 0.1, 0.3], [0.71, 0.5, 0.1, 0.3]]),
        torch.tensor([[0.52, 0.5, 0.1, 0.3]]),
    ]
    ids = [torch.tensor([7, 3]), torch.tensor([9, 3]), torch.tensor([9])]
    imgs = torch.randn(1, 3, 3, *IMAGE)
    losses, records = model.forward_clip(imgs, [boxes], [ids], return_matches=True)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_giou", "loss_aux"}
    f0, f1, f2 = records[0]

    def slot_of(record: dict, identity: int) -> int:
        return int(torch.nonzero(record["slot_ids"] == identity).flatten()[0])

    assert (f0["slot_ids"] == -1).all() and (f0["track_targets"] == -1).all()
    assert sorted(f0["det_targets"].tolist()) == [0, 1]
    assert sorted(i for i in f0["next_ids"].tolist() if i >= 0) == [3, 7]
    assert int(f1["track_targets"][slot_of(f1, 3)]) == 1  # identity 3 is row 1 of frame 1
    assert int(f1["track_targets"][slot_of(f1, 7)]) == -1  # 7 left: "no object"
    assert f1["det_targets"].tolist() == [0]  # only the new person (9) goes to the detect queries
    assert sorted(i for i in f1["next_ids"].tolist() if i >= 0) == [3, 9]
    assert int(f2["track_targets"][slot_of(f2, 9)]) == 0
    assert int(f2["track_targets"][slot_of(f2, 3)]) == -1
    assert f2["det_targets"].numel() == 0


def test_training_drops_tracks_and_inserts_false_positives() -> None:
    model = tiny(track_drop_prob=1.0, fp_insert_prob=0.0).train()
    boxes, ids = clip_targets()
    _, records = model.forward_clip(torch.randn(1, 2, 3, *IMAGE), boxes, ids, return_matches=True)
    assert (records[0][1]["slot_ids"] == -1).all()  # every track dropped: frame 1 starts over
    model = tiny(track_drop_prob=0.0, fp_insert_prob=1.0).train()
    _, records = model.forward_clip(torch.randn(1, 2, 3, *IMAGE), boxes, ids, return_matches=True)
    carried = records[0][1]["slot_ids"]
    assert sorted(carried[carried >= 0].tolist()) == [1, 2] and int((carried == -1).sum()) == TRACKS - 2
    first = records[0][0]
    assert int(first["next_valid"].sum()) == 4  # two tracks and, for each, one false positive
    assert sorted(first["next_ids"][first["next_valid"]].tolist()) == [-1, -1, 1, 2]
    assert int(records[0][1]["track_targets"].ge(0).sum()) == 2  # the false positives' target: no object


# -- training -------------------------------------------------------------------------------


def test_training_batch_contract_with_clips_of_different_sizes() -> None:
    model = tiny().train()
    batch = {  # hat_motr's MotClipCollate: one entry per clip, clips may differ in size and length
        "img": [torch.randn(2, 3, *IMAGE), torch.randn(3, 3, 96, 128)],
        "target_boxes": [[torch.tensor([[0.5, 0.5, 0.2, 0.4]])] * 2, [torch.zeros(0, 4)] * 3],
        "target_ids": [[torch.tensor([4])] * 2, [torch.zeros(0, dtype=torch.long)] * 3],
    }
    losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_giou", "loss_aux"}
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    sum(losses.values()).backward()
    assert model.qim.attn.q_proj.weight.grad is not None  # the QIM trains through the carried tracks
    assert model.detect_query.grad is not None
    assert "criterion" not in dict(model.named_children())
    with pytest.raises(KeyError, match="batch of clips"):
        model({"img": torch.randn(1, 3, *IMAGE)})
    with pytest.raises(RuntimeError, match="needs a criterion"):
        tiny(deploy="detect").forward_clip(torch.randn(1, 1, 3, *IMAGE), [[torch.zeros(0, 4)]], [[torch.zeros(0)]])


def test_loss_decreases_when_overfitting_one_clip() -> None:
    model = tiny(track_drop_prob=0.0, fp_insert_prob=0.0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    imgs = torch.randn(1, 2, 3, *IMAGE, generator=torch.Generator().manual_seed(0))
    boxes, ids = clip_targets()
    history = []
    for _ in range(30):
        loss = sum(model.forward_clip(imgs, boxes, ids).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    first, last = np.mean(history[:3]), np.mean(history[-3:])
    assert last < 0.6 * first, history  # measured: 13.6 -> 6.4


def test_track_clip_carries_tracks_through_the_tracker() -> None:
    model = tiny().eval()
    with torch.no_grad():  # make every detect query confident, so the tracker starts tracks
        model.decoder.class_head.bias.fill_(5.0)
        frames = model.track_clip(torch.randn(1, 3, 3, *IMAGE))
        last = model({"img": torch.randn(2, 2, 3, *IMAGE)})  # eval on clips: the last frames' outputs
    assert len(frames) == 3
    assert frames[0]["query_pos"][0, :TRACKS].abs().sum() == 0  # frame 0: no tracks yet
    assert frames[1]["query_pos"][0, :TRACKS].abs().sum() > 0  # frame 1: the tracker's new tracks
    assert tuple(last["logits"].shape) == (2, SLOTS, 1)


def test_registered_by_name() -> None:
    registry = Registry()
    assert registry.add_marked(motr) == 1 and registry.add_marked(criterion) == 1
    model = registry.build(
        {
            "type": "MotrModel",
            "backbone": EfficientNet("b0", activation="relu", use_se_block=False, include_top=False, out_indices=[4]),
            "d_model": 32,
            "num_heads": 4,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "ffn_channels": 64,
            "num_queries": 4,
            "num_track_slots": 4,
            "criterion": {"type": "MotrCriterion", "aux_loss": False},
        }
    )
    assert isinstance(model.criterion, MotrCriterion) and not model.criterion.aux_loss


# -- export ---------------------------------------------------------------------------------


def run_onnx(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {k: v.numpy() for k, v in inputs.items()}), strict=True))


@pytest.mark.parametrize(
    ("mode", "make_inputs", "names"), [("detect", detect_inputs, DETECT_INPUTS), ("qim", qim_inputs, QIM_INPUTS)]
)
def test_float_onnx_export_of_both_graphs(tmp_path: Path, mode: str, make_inputs, names) -> None:
    model = tiny(deploy=mode).eval()
    inputs = make_inputs()
    assert tuple(inputs) == names
    info = export_float_onnx(model, inputs, tmp_path / f"{mode}.float.onnx")
    assert info.input_names == list(names)
    with torch.no_grad():
        expected = model(inputs)
    assert info.output_names == list(expected)
    got = run_onnx(info.path, inputs)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)


@pytest.fixture(scope="module")
def calibrated_state() -> dict[str, torch.Tensor]:
    """The training model converted and calibrated the way the calibration stage does it:
    eval forward on clip batches, so graph 1 sees carried track queries and the QIM runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _calibrate()
    finally:
        torch.set_num_threads(threads)


def _calibrate() -> dict[str, torch.Tensor]:
    model = tiny().eval()
    with torch.no_grad():
        model.decoder.class_head.bias.fill_(1.0)  # some detect queries start tracks
    qmodel, report = convert(copy.deepcopy(model), QConfig())
    assert {kind for _, kind, _ in report.left_float} == {"LayerNorm", "Softmax"}, report.summary()
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for seed in range(2):
            qmodel({"img": torch.randn(1, 3, 3, *IMAGE, generator=torch.Generator().manual_seed(seed)).clamp(-2, 2)})
    with torch.no_grad():  # one quantized pass records each layer's input grid (for the int32 biases)
        qmodel({"img": torch.randn(1, 2, 3, *IMAGE).clamp(-2, 2)})
    return qmodel.state_dict()


@pytest.mark.parametrize(("mode", "make_inputs"), [("detect", detect_inputs), ("qim", qim_inputs)])
def test_int8_export_of_both_graphs_runs_every_matmul_int8(
    tmp_path: Path, calibrated_state: dict[str, torch.Tensor], mode: str, make_inputs
) -> None:
    qmodel, _ = convert(tiny(deploy=mode), QConfig())
    qmodel.load_state_dict(calibrated_state)
    freeze(qmodel)
    inputs = make_inputs()
    with torch.no_grad():
        simulated = qmodel(inputs)
    path = tmp_path / f"{mode}.onnx"
    info = export_onnx(qmodel, inputs, path)
    assert info.output_names == list(simulated) and not info.warnings
    optimized = onnx.load(str(OnnxRuntimeBackend().compile(path, 3, path.with_suffix(".opt3.onnx"))))
    ops = Counter(node.op_type for node in optimized.graph.node)
    assert not {"Gemm", "MatMul", "Conv", "FusedConv"} & set(ops), ops
    assert ops["QLinearMatMul"] == (2 if mode == "qim" else 2 * (1 + 2 * 2))  # 2 per attention
    result = analyze(optimized, exported=onnx.load(str(path)), opt_level=3)
    assert result.int8_flops_share == 1.0
    got = run_onnx(path, inputs)
    for name, value in simulated.items():
        a, b = torch.from_numpy(got[name]).flatten().double(), value.flatten().double()
        assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.98, name


# -- query selection and the token loss (the tiny config's, not the recipe's) -----------------


def test_query_selection_centres_the_detect_references_on_the_best_tokens() -> None:
    model = tiny(query_selection=True, num_queries=4).eval()
    with torch.no_grad():
        model.token_head.weight.zero_()
        model.token_head.weight[0, 0] = 1.0
        model.token_head.bias.zero_()
    memory = torch.zeros(1, 6, D_MODEL)
    memory[0, :, 0] = torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0])  # a 2x3 grid, scores by token
    refs = torch.sigmoid(model.selected_refs(memory, (2, 3)))
    # every token neighbours token 1 (score 5) in a 3x3 window: it is the one peak; the rest follow by score
    centres = [((1 + 0.5) / 3, 0.25), ((0 + 0.5) / 3, 0.75), ((2 + 0.5) / 3, 0.75), ((1 + 0.5) / 3, 0.75)]
    torch.testing.assert_close(refs[0, :, :2], torch.tensor(centres), atol=2e-3, rtol=0)
    torch.testing.assert_close(refs[0, :, 2:], torch.sigmoid(model.detect_ref[0, :, 2:]).detach(), atol=2e-3, rtol=0)
    with pytest.raises(ValueError, match="too few tokens"):
        tiny(query_selection=True, num_queries=7)
    untrained = tiny(query_selection=True, num_queries=4).train()
    boxes, ids = clip_targets()
    with pytest.raises(ValueError, match="token_weight > 0"):
        untrained({"img": torch.zeros(1, 2, 3, *IMAGE), "target_boxes": boxes, "target_ids": ids})


def test_peaks_rank_before_their_neighbours() -> None:
    from hat_motr.model.motr import peak_scores

    scores = torch.tensor([[9.0, 8.0, 0.0, 0.0, 7.0, 0.0, 6.0, 0.0]])  # a 1x8 row: peaks at 0, 4 and 6
    order = peak_scores(scores, 1, 8).topk(4, dim=1).indices[0].tolist()
    assert order == [0, 4, 6, 1]  # the neighbour of a peak (index 1, score 8) only after every peak


def test_the_token_loss_targets_the_tokens_whose_centre_is_in_a_box() -> None:
    crit = MotrCriterion(token_weight=1.0)
    box = torch.tensor([[0.25, 0.25, 0.5, 0.5]])  # the top-left quarter: of a 2x4 grid, tokens 0 and 1
    inside = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    right = ((inside * 2 - 1) * 20.0).reshape(1, 8, 1)
    assert float(crit.token_loss(right, (2, 4), [box])) < 1e-6
    assert float(crit.token_loss(-right, (2, 4), [box])) > 10.0
    with pytest.raises(ValueError, match="token_weight must be >= 0"):
        MotrCriterion(token_weight=-1.0)


def test_query_selection_trains_and_exports_as_a_topk(tmp_path: Path) -> None:
    model = tiny(query_selection=True, num_queries=4, criterion=MotrCriterion(token_weight=2.0)).train()
    boxes, ids = clip_targets()
    losses = model({"img": torch.randn(1, 2, 3, *IMAGE), "target_boxes": boxes, "target_ids": ids})
    assert float(losses["loss_token"].detach()) > 0
    sum(losses.values()).backward()
    assert model.token_head.weight.grad is not None and model.token_head.weight.grad.abs().sum() > 0
    deploy = tiny(deploy="detect", query_selection=True, num_queries=4).eval()
    path = export_float_onnx(deploy, detect_inputs(), tmp_path / "qs.float.onnx").path
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "TopK" in ops
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {k: v.numpy() for k, v in detect_inputs().items()}
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    with torch.no_grad():
        ref = deploy(detect_inputs())
    np.testing.assert_allclose(got["boxes"], ref["boxes"].numpy(), atol=1e-4)
