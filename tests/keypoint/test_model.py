"""HeatmapKeypointModel with EfficientNet-b0 + DeconvDecoder: shapes, loss, deploy form,
int8 conversion, and a short training sanity check."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hat.models import ConvBNAct, EfficientNet
from hat.postprocess import PostProcess
from hat.quant import qmodules as Q
from hat.quant.modes import calibration_mode
from hat.quant.prepare import convert, freeze
from hat.quant.qconfig import QConfig
from hat.registry import Registry
from hat_keypoint import metrics as keypoint_metrics
from hat_keypoint.model import (
    DeconvDecoder,
    HeatmapDecoder,
    HeatmapKeypointModel,
    HeatmapMSELoss,
    KeypointPostProcess,
    decoder_head,
    heatmap_decoder,
    heatmap_model,
    loss,
)
from tests.keypoint.heatmap_reference import random_keypoints, reference_targets

NUM = 12


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def b0_backbone() -> EfficientNet:
    return EfficientNet("b0", num_classes=1, activation="relu", use_se_block=False, include_top=False)


def recipe_head() -> DeconvDecoder:
    return DeconvDecoder(320, NUM, input_index=4, num_conv_layers=3, num_deconv_filters=[128, 128, 128])


def build(deploy: bool = False, seed: int = 0) -> HeatmapKeypointModel:
    torch.manual_seed(seed)
    return HeatmapKeypointModel(b0_backbone(), recipe_head(), HeatmapMSELoss(), deploy=deploy)


def training_batch(n: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    keypoints = random_keypoints(n, 8.0, 120.0, seed=seed)
    heatmap, weight = reference_targets(keypoints)
    img = torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(seed))
    return {"img": img, "keypoints": keypoints, "heatmap": heatmap, "heatmap_weight": weight}


# -- the recipe's network --------------------------------------------------------------------------


def test_parameter_counts_of_the_recipe() -> None:
    model = build()
    head = model.decode_head
    # 3 convs (320->128, 128->128 x2, BN), 3 deconvs 128->128 k4 (BN), final 3x3 conv to 12 with bias
    convs = 320 * 128 * 9 + 2 * 128 * 128 * 9 + 3 * 2 * 128
    deconvs = 3 * (128 * 128 * 16 + 2 * 128)
    final = 128 * NUM * 9 + NUM
    assert count(head) == convs + deconvs + final == 1_465_356
    assert count(model.backbone) == 2_958_848
    assert count(model) == 4_424_204


def test_decoder_structure_is_fusable() -> None:
    head = recipe_head()
    assert len(head.convs) == 3 and all(isinstance(c, ConvBNAct) for c in head.convs)
    assert head.convs[0].conv.in_channels == 320 and head.convs[0].conv.out_channels == 128
    assert len(head.deconvs) == 3 and head.upsample_factor == 8
    for block in head.deconvs:
        deconv, bn, act = block
        assert isinstance(deconv, nn.ConvTranspose2d) and deconv.bias is None
        assert (deconv.kernel_size, deconv.stride, deconv.padding) == ((4, 4), (2, 2), (1, 1))
        assert isinstance(bn, nn.BatchNorm2d) and isinstance(act, nn.ReLU)
        assert Q.rewritable_as_conv(deconv)
    assert head.final.bias is not None and head.final.kernel_size == (3, 3)


@pytest.mark.parametrize("kernel", [2, 3, 4])
def test_every_deconv_kernel_doubles_exactly(kernel: int) -> None:
    head = DeconvDecoder(8, 5, 0, num_conv_layers=1, num_deconv_filters=[8, 4], num_deconv_kernels=[kernel, kernel])
    out = head([torch.randn(1, 8, 5, 7)])
    assert out.shape == (1, 5, 20, 28)
    assert all(Q.rewritable_as_conv(block[0]) for block in head.deconvs)


def test_decoder_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="kernel must be one of"):
        DeconvDecoder(8, 5, 0, num_deconv_filters=[8], num_deconv_kernels=[5])
    with pytest.raises(ValueError, match="same length"):
        DeconvDecoder(8, 5, 0, num_deconv_filters=[8, 8], num_deconv_kernels=[4])
    with pytest.raises(ValueError, match="odd"):
        DeconvDecoder(8, 5, 0, final_conv_kernel=2)


def test_forward_loss_and_backward() -> None:
    model = build().train()
    batch = training_batch()
    out = model(batch)
    assert set(out) == {"loss"}  # training returns the losses alone
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for param in (
        model.backbone.stem.conv.weight,
        model.decode_head.deconvs[0][0].weight,
        model.decode_head.final.bias,
    ):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_eval_returns_raw_heatmaps_that_the_post_process_decodes_inside_the_image() -> None:
    model = build().eval()
    batch = training_batch()
    with torch.no_grad():
        out = model(batch)  # targets in the batch change nothing in eval
        assert set(out) == {"heatmap"} and out["heatmap"].shape == (2, NUM, 32, 32)
        assert torch.equal(model({"img": batch["img"]})["heatmap"], out["heatmap"])
    predictions = KeypointPostProcess(scale=4, mode="averaged")(out, batch)
    assert set(predictions) == {"heatmap", "pred_keypoints", "pred_scores"}
    keypoints = predictions["pred_keypoints"]
    assert keypoints.shape == (2, NUM, 2) and predictions["pred_scores"].shape == (2, NUM)
    assert (keypoints >= 0).all() and (keypoints <= 128).all()
    expected, _ = HeatmapDecoder(4, "averaged")(out["heatmap"])
    assert torch.equal(keypoints, expected)


def test_deploy_returns_only_heatmaps_and_shares_the_state_dict() -> None:
    train_model = build(seed=1).eval()
    deploy_model = build(deploy=True, seed=2).eval()
    assert list(train_model.state_dict()) == list(deploy_model.state_dict())
    deploy_model.load_state_dict(train_model.state_dict())  # strict: a training checkpoint loads
    batch = training_batch()
    with torch.no_grad():
        out = deploy_model(batch)
        ref = train_model(batch)
    assert set(out) == {"heatmap"}
    assert torch.equal(out["heatmap"], ref["heatmap"])
    # the loss is not a submodule: nothing for the quantizer or the checkpoint
    names = {name for name, _ in train_model.named_modules()}
    assert "loss" not in names
    assert not any("loss" in key for key in train_model.state_dict())


def test_heatmap_mse_loss_ignores_invalid_keypoints() -> None:
    pred = torch.zeros(1, 3, 2, 2)
    target = torch.ones(1, 3, 2, 2)
    target[0, 2] = 5.0  # would dominate if it counted
    weight = torch.tensor([[1.0, 1.0, 0.0]])
    assert HeatmapMSELoss()(pred, target, weight).item() == pytest.approx(1.0)  # 2 valid x 4 cells of 1
    assert HeatmapMSELoss(loss_weight=3.0)(pred, target, weight).item() == pytest.approx(3.0)
    target[0, 2] = 1.0
    full = HeatmapMSELoss()(pred + 0.3, target)
    assert full.item() == pytest.approx(torch.nn.functional.mse_loss(pred + 0.3, target).item())
    nothing = HeatmapMSELoss()(pred.requires_grad_(), target, torch.zeros(1, 3))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_registered_names_build_the_reference_model() -> None:
    registry = Registry()
    registry.add(EfficientNet, "efficientnet")
    for module in (decoder_head, heatmap_decoder, heatmap_model, loss, keypoint_metrics):
        registry.add_marked(module)
    assert {
        "DeconvDecoder",
        "HeatmapDecoder",
        "KeypointPostProcess",
        "HeatmapMSELoss",
        "HeatmapKeypointModel",
        "PCKMetric",
        "MeanKeypointDist",
    } <= set(registry.names())
    cfg = {
        "type": "HeatmapKeypointModel",
        "backbone": {
            "type": "efficientnet",
            "model_type": "b0",
            "num_classes": 1,
            "bn_kwargs": {},
            "activation": "relu",
            "use_se_block": False,
            "include_top": False,
        },
        "decode_head": {
            "type": "DeconvDecoder",
            "in_channels": 320,
            "out_channels": NUM,
            "input_index": 4,
            "num_conv_layers": 3,
            "num_deconv_filters": [128, 128, 128],
            "num_deconv_kernels": [4, 4, 4],
            "final_conv_kernel": 3,
        },
        "loss": {"type": "HeatmapMSELoss"},
    }
    model = registry.build(cfg)
    assert isinstance(model, HeatmapKeypointModel) and isinstance(model.loss, HeatmapMSELoss)
    post_process = registry.build({"type": "KeypointPostProcess", "scale": 4, "mode": "averaged"})
    assert isinstance(post_process, KeypointPostProcess) and isinstance(post_process, PostProcess)
    metric = registry.build({"type": "PCKMetric", "alpha": 0.1, "feat_stride": 4, "img_shape": [128, 128]})
    assert metric.name == "PCK@0.1"


# -- int8 ------------------------------------------------------------------------------------------


@torch.no_grad()
def settle_batch_norm(model: nn.Module, batches: int = 2) -> nn.Module:
    """Running statistics from real forwards (cumulative average), as after training:
    with the initial statistics the untrained head's outputs are ~0 and say nothing."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    for seed in range(batches):
        model(training_batch(4, seed=50 + seed))
    return model.eval()


def test_deploy_model_converts_entirely_to_int8_and_freezes_exactly() -> None:
    float_model = settle_batch_norm(build(deploy=True))
    deconv_paths = [name for name, m in float_model.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconv_paths) == 3
    qmodel, report = convert(copy.deepcopy(float_model), QConfig())
    assert report.left_float == []
    qmodel.eval()
    modules = dict(qmodel.named_modules())
    for path in deconv_paths:
        assert isinstance(modules[path], Q.QConvTranspose2d) and modules[path].act == "relu"
        assert Q.rewritable_as_conv(modules[path].module)
    assert not any(
        isinstance(m, (nn.BatchNorm2d, nn.ConvTranspose2d)) and name not in {f"{p}.module" for p in deconv_paths}
        for name, m in qmodel.named_modules()
    )
    with torch.no_grad(), calibration_mode(qmodel):
        for seed in range(3):
            qmodel(training_batch(2, seed=10 + seed))
    x = training_batch(2, seed=99)
    with torch.no_grad():
        simulated = qmodel(x)["heatmap"]
        reference = float_model(x)["heatmap"]
        frozen = freeze(qmodel)
        fixed = frozen(x)["heatmap"]
        assert set(frozen(x)) == {"heatmap"}
        deconvs = [modules[p] for p in deconv_paths]
        assert all(m.rewritten for m in deconvs)  # exported as int8 convs + depth-to-space
        saved = [(m.phases, m.as_conv_padding) for m in deconvs]
        for m in deconvs:  # the frozen transposed conv itself, without the rewrite
            m.phases, m.as_conv_padding = None, None
        fixed_deconv = frozen(x)["heatmap"]
        for m, (phases, padding) in zip(deconvs, saved, strict=True):
            m.phases, m.as_conv_padding = phases, padding
    assert fixed.shape == (2, NUM, 32, 32)
    # Freezing (weights and biases as constants on their grids) changes nothing.
    assert torch.allclose(fixed_deconv, simulated, atol=1e-5)
    # The conv + depth-to-space rewrite is exact in real arithmetic, but it sums in another
    # order: an accumulator that lands on a rounding tie in one order may round one int8
    # step the other way. So: every output within one step of the simulation, nearly all equal.
    step = float(frozen.decode_head.final.out_quant.scale)
    assert float((fixed - simulated).abs().max()) <= step * 1.001
    same = torch.isclose(fixed, simulated, rtol=0, atol=1e-5).double().mean()
    assert same > 0.99
    cosine = torch.nn.functional.cosine_similarity(simulated.flatten(), reference.flatten(), dim=0)
    # An untrained network on noise is no accuracy test (the demo measures calibrated PCK);
    # this only shows the int8 heatmaps are the float network's, not noise (measured: 0.77).
    assert cosine > 0.5


# -- training sanity -------------------------------------------------------------------------------


class TinyBackbone(nn.Module):
    """Three stride-2 ConvBNAct layers returning every feature (a stand-in for EfficientNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([ConvBNAct(3, 16, 3, 2), ConvBNAct(16, 32, 3, 2), ConvBNAct(32, 64, 3, 2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


def test_short_training_halves_the_loss() -> None:
    # Three keypoints; image channel k shows a blob at keypoint k, so the task is local
    # (find the blob) and learnable in a few steps. Stride 8 features + one deconv -> stride 4.
    torch.manual_seed(0)
    model = HeatmapKeypointModel(TinyBackbone(), DeconvDecoder(64, 3, -1, 1, [32], [4]), HeatmapMSELoss()).train()
    keypoints = random_keypoints(4, 16.0, 112.0, seed=5)[:, :3]
    keypoints[0, 2, 2] = 0.0  # one invalid keypoint
    heatmap, weight = reference_targets(keypoints)
    blobs, _ = reference_targets(keypoints, stride=1, shape=(128, 128), sigma=4.0)
    batch = {"img": blobs * 2 - 0.5, "heatmap": heatmap, "heatmap_weight": weight}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        value = model(batch)["loss"]
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.5 * losses[0], losses
