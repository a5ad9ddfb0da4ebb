"""FCOS3D as a whole: the three forward modes, int8 conversion with nothing left float,
and export of the fixed-point model to an onnxruntime graph that runs int8."""

from __future__ import annotations

import copy

import pytest
import torch

from hat.models import EfficientNet
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig
from hat_fcos3d.model import FCOS3D, FCOS3DHead, FCOS3DPostProcess, FCOS3DTarget
from hat_fcos3d.model.head import OUTPUT_KINDS, unflatten_outputs
from hat_fcos3d.model.loss import LOSS_NAMES
from tests.fcos3d.helpers import (
    MODEL_HW,
    STRIDES,
    featmap_sizes,
    settle_batchnorm,
    tiny_model,
    tiny_post_process,
    training_batch,
)


def calibrated_fixed_point(model: FCOS3D, batches: int = 2) -> FCOS3D:
    qmodel, report = convert(copy.deepcopy(model), QConfig())
    assert report.left_float == [], report.summary()
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for seed in range(batches):
            qmodel(training_batch(seed=seed)["img"])
    with torch.no_grad():  # one quantized pass records each conv's input grid (for the int32 biases)
        qmodel(training_batch(seed=0)["img"])
    return freeze(qmodel)


def test_training_forward_returns_named_losses_and_trains() -> None:
    model = tiny_model().train()
    out = model(training_batch())
    assert set(out) == set(LOSS_NAMES)
    assert all(bool(torch.isfinite(v)) for v in out.values())
    sum(out.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_eval_forward_returns_flat_raw_maps_that_the_post_process_decodes() -> None:
    model = tiny_model().eval()
    batch = training_batch()
    with torch.no_grad():
        out = model(batch)
    assert list(out) == [f"{kind}_{level}" for kind in OUTPUT_KINDS for level in range(len(STRIDES))]
    raw = unflatten_outputs(out)
    sizes = featmap_sizes(MODEL_HW)
    assert [tuple(m.shape[-2:]) for m in raw["cls"]] == sizes
    assert raw["cls"][0].shape[:2] == (2, 10) and raw["attr"][0].shape[1] == 9
    detections = tiny_post_process()(out, batch)["detections_cam"]
    assert len(detections) == 2
    for dets in detections:
        assert set(dets) == {"center", "size", "yaw", "velocity", "label", "score", "attribute"}


def test_deploy_form_is_flat_and_shares_the_state_dict() -> None:
    model, deploy = tiny_model(), tiny_model(deploy=True)
    assert list(model.state_dict()) == list(deploy.state_dict())
    deploy.load_state_dict(model.state_dict())
    model.eval(), deploy.eval()
    img = training_batch()["img"]
    with torch.no_grad():
        flat = deploy({"img": img})
        raw = model.forward_raw(img)
    assert len(flat) == len(OUTPUT_KINDS) * len(STRIDES) and "cls_0" in flat and "centerness_4" in flat
    back = unflatten_outputs(flat)
    for kind in OUTPUT_KINDS:
        for a, b in zip(back[kind], raw[kind], strict=True):
            torch.testing.assert_close(a, b)


def test_mismatched_parts_are_rejected() -> None:
    head = FCOS3DHead(in_channels=8, feat_channels=8, strides=STRIDES)
    with pytest.raises(ValueError, match="strides"):
        FCOS3D(torch.nn.Identity(), None, head, target=FCOS3DTarget(strides=(8, 16, 32), regress_ranges=[(0, 1)] * 3))
    model = FCOS3D(torch.nn.Identity(), None, head, target=FCOS3DTarget(strides=STRIDES, dir_offset=0.0))
    with pytest.raises(ValueError, match="encode boxes differently"):
        FCOS3DPostProcess(strides=STRIDES).check_model(model)
    with pytest.raises(ValueError, match="post_process strides"):
        FCOS3DPostProcess(strides=(8, 16, 32)).check_model(FCOS3D(torch.nn.Identity(), None, head))
    FCOS3DPostProcess(strides=STRIDES).check_model(FCOS3D(torch.nn.Identity(), None, head))  # agrees
    with pytest.raises(KeyError, match="gt_boxes_3d"):
        tiny_model().train()({"img": torch.zeros(1, 3, *MODEL_HW), "intrinsic": torch.eye(3)[None]})


def test_whole_model_converts_to_int8_and_tracks_the_float_model() -> None:
    model = settle_batchnorm(tiny_model()).eval()
    qmodel = calibrated_fixed_point(model)
    batch = training_batch(seed=5)
    with torch.no_grad():
        ref = model.forward_raw(batch["img"])
        flat = qmodel(batch)
        out = unflatten_outputs(flat)
    assert len(tiny_post_process()(flat, batch)["detections_cam"]) == 2
    # Untrained class logits barely vary around the prior's -4.6, so int8 steps are a
    # larger share of their spread than for the regression outputs.
    for kind, least in (("cls", 0.9), ("depth", 0.95), ("offset", 0.95)):
        a, b = torch.cat([m.flatten() for m in out[kind]]), torch.cat([m.flatten() for m in ref[kind]])
        assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > least, kind


def test_recipe_backbone_and_neck_convert_with_nothing_float() -> None:
    from hat.models.bifpn import BiFPN

    torch.manual_seed(0)
    backbone = EfficientNet("b0", activation="relu", use_se_block=False, include_top=False, out_indices=(2, 3, 4))
    neck = BiFPN([8, 16, 32], backbone.out_channels, list(STRIDES), out_channels=64, num_repeats=1)
    model = FCOS3D(backbone, neck, FCOS3DHead(strides=STRIDES)).eval()
    qmodel, report = convert(copy.deepcopy(model), QConfig())
    assert report.left_float == [], report.summary()
    with torch.no_grad(), calibration_mode(qmodel):
        out = qmodel(torch.randn(1, 3, 128, 128))
    assert [tuple(m.shape[-2:]) for m in unflatten_outputs(out)["cls"]] == [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


@pytest.mark.slow
def test_exported_graph_runs_int8_in_onnxruntime(tmp_path) -> None:
    """Every level has its own folded convs and quantizers, so every bias sits on its int32
    grid and export succeeds; every conv runs as QLinearConv."""
    from hat.deploy import OnnxRuntimeBackend, analyze, export_onnx

    float_model = settle_batchnorm(tiny_model())
    qmodel = calibrated_fixed_point(float_model)
    deploy = tiny_model(deploy=True)
    qdeploy, _ = convert(deploy, QConfig())
    qdeploy.load_state_dict(qmodel.state_dict())
    qdeploy = freeze(qdeploy)
    inputs = {"img": training_batch(batch=1, seed=3)["img"]}
    path = tmp_path / "fcos3d.onnx"
    export_onnx(qdeploy, inputs, path)
    optimized = OnnxRuntimeBackend().compile(path, 2, tmp_path / "fcos3d.opt2.onnx")
    result = analyze(optimized, exported=path, opt_level=2)
    assert result.int8_flops_share is not None and result.int8_flops_share > 0.99
    # nothing float, the per-level scales included (int8 QLinearMul before the dequant stubs)
    assert result.non_int8() == [], [(n.name, n.op_type) for n in result.non_int8()]


def test_levels_share_conv_weights_but_not_batchnorms_and_folding_unties_them() -> None:
    head = FCOS3DHead(strides=STRIDES, in_channels=16, feat_channels=16)
    level0, level3 = head.levels[0], head.levels[3]
    assert level0.cls_convs[0].conv.weight is level3.cls_convs[0].conv.weight
    assert level0.conv_cls.bias is level3.conv_cls.bias
    assert level0.cls_convs[0].bn is not level3.cls_convs[0].bn
    with torch.no_grad():  # different statistics per level, as training leaves them
        level3.cls_convs[0].bn.running_mean.fill_(0.5)
    qhead, report = convert(copy.deepcopy(head), QConfig())
    assert report.left_float == [], report.summary()
    folded0 = dict(qhead.levels[0].named_parameters())
    folded3 = dict(qhead.levels[3].named_parameters())
    conv = next(name for name in folded0 if name.startswith("cls_convs.0") and name.endswith("bias"))
    assert folded0[conv] is not folded3[conv]
    assert not torch.allclose(folded0[conv], folded3[conv])
    # the float head keeps its tied weights (conversion works on a copy)
    assert head.levels[0].cls_convs[0].conv.weight is head.levels[3].cls_convs[0].conv.weight
