"""Shared pieces of the FCOS3D tests: a camera, random scenes, fake head outputs, tiny models."""

from __future__ import annotations

import math

import torch
from torch import nn

from hat.models.layers import ConvBNAct
from hat_fcos3d.model import FCOS3D, FCOS3DHead, FCOS3DLoss, FCOS3DPostProcess, FCOS3DTarget

STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (256, 384)
NUM_CLASSES = 10
NUM_ATTRS = 9


def intrinsic(fx: float = 300.0, fy: float = 310.0, cx: float = 190.0, cy: float = 126.0) -> torch.Tensor:
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def featmap_sizes(image_hw: tuple[int, int] = IMAGE_HW) -> list[tuple[int, int]]:
    return [(math.ceil(image_hw[0] / s), math.ceil(image_hw[1] / s)) for s in STRIDES]


def random_scene(
    n: int, seed: int, K: torch.Tensor | None = None, image_hw: tuple[int, int] = IMAGE_HW, min_bev_gap: float = 6.0
) -> dict[str, torch.Tensor]:
    """``n`` camera-frame boxes whose projected centres lie well inside the image, at
    depths 6..40 m, far enough apart in bird's-eye view that no two overlap."""
    K = intrinsic() if K is None else K
    gen = torch.Generator().manual_seed(seed)
    height, width = image_hw
    centers: list[torch.Tensor] = []
    while len(centers) < n:
        u = 30 + torch.rand((), generator=gen) * (width - 60)
        v = 30 + torch.rand((), generator=gen) * (height - 60)
        z = 6 + torch.rand((), generator=gen) * 34
        point = torch.linalg.inv(K) @ torch.stack([u * z, v * z, z])
        if all(float((point[[0, 2]] - c[[0, 2]]).norm()) > min_bev_gap for c in centers):
            centers.append(point)
    center = torch.stack(centers)
    size = torch.stack(
        [
            0.5 + torch.rand(n, generator=gen) * 2.0,  # w
            0.5 + torch.rand(n, generator=gen) * 4.5,  # l
            1.0 + torch.rand(n, generator=gen) * 1.5,  # h
        ],
        dim=-1,
    )
    yaw = (torch.rand(n, generator=gen) * 2 - 1) * math.pi
    velocity = torch.randn(n, 2, generator=gen) * 3
    velocity[0] = float("nan")  # one box without a velocity
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    attributes = torch.randint(-1, NUM_ATTRS - 1, (n,), generator=gen)
    boxes = torch.cat([center, size, yaw[:, None], velocity], dim=-1)
    return {"gt_boxes_3d": boxes, "gt_labels": labels, "gt_attributes": attributes, "intrinsic": K}


def make_target(**kwargs) -> FCOS3DTarget:
    return FCOS3DTarget(strides=STRIDES, num_classes=NUM_CLASSES, num_attrs=NUM_ATTRS, **kwargs)


def oracle_outputs(
    targets: dict[str, torch.Tensor], sizes: list[tuple[int, int]], flip_rot: bool = True, logit: float = 20.0
) -> dict[str, list[torch.Tensor]]:
    """Head outputs that say exactly what the targets say: confident class, direction,
    attribute and centerness logits at positive points, the encoded codes as regression
    (with pi added to every other rotation, which the direction bin must undo)."""
    batch, points = targets["labels"].shape
    pos = targets["pos_mask"]
    cls = torch.full((batch, points, NUM_CLASSES), -logit)
    b_idx, p_idx = torch.nonzero(pos, as_tuple=True)
    cls[b_idx, p_idx, targets["labels"][pos]] = logit
    centerness = torch.where(pos, logit, -logit).unsqueeze(-1)
    codes = targets["bbox_targets"].clone()
    if flip_rot:
        flips = (torch.arange(points) % 2).to(codes.dtype) * math.pi
        codes[..., 6] = codes[..., 6] + flips
    direction = torch.full((batch, points, 2), -logit)
    direction.scatter_(-1, targets["dir_targets"].unsqueeze(-1), logit)
    attr = torch.full((batch, points, NUM_ATTRS), -logit)
    attr.scatter_(-1, targets["attr_targets"].unsqueeze(-1), logit)
    flat = {
        "cls": cls,
        "offset": codes[..., 0:2],
        "depth": codes[..., 2:3],
        "size": codes[..., 3:6],
        "rot": codes[..., 6:7],
        "velo": codes[..., 7:9],
        "dir": direction,
        "attr": attr,
        "centerness": centerness,
    }
    return {kind: unflatten_levels(value, sizes) for kind, value in flat.items()}


def unflatten_levels(values: torch.Tensor, sizes: list[tuple[int, int]]) -> list[torch.Tensor]:
    """``(B, P, C)`` -> per-level ``(B, C, H, W)`` (inverse of ``flatten_levels``)."""
    maps, start = [], 0
    for h, w in sizes:
        chunk = values[:, start : start + h * w]
        maps.append(chunk.reshape(values.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous())
        start += h * w
    return maps


class TinyBackbone(nn.Module):
    """Five stride-2 conv-BN-ReLU layers; returns the stride-8, 16 and 32 maps."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [ConvBNAct(3 if i == 0 else width, width, 3, stride=2, act="relu") for i in range(5)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 2:
                out.append(x)
        return out


def tiny_model(width: int = 8, channels: int = 16, deploy: bool = False, seed: int = 0) -> FCOS3D:
    from hat.models.bifpn import BiFPN

    torch.manual_seed(seed)
    neck = BiFPN(in_strides=[8, 16, 32], in_channels=[width] * 3, out_strides=list(STRIDES), out_channels=channels)
    head = FCOS3DHead(
        num_classes=NUM_CLASSES, in_channels=channels, feat_channels=channels, strides=STRIDES, num_attrs=NUM_ATTRS
    )
    return FCOS3D(
        TinyBackbone(width),
        neck,
        head,
        target=make_target(),
        loss=FCOS3DLoss(num_classes=NUM_CLASSES, num_attrs=NUM_ATTRS),
        deploy=deploy,
    )


def tiny_post_process() -> FCOS3DPostProcess:
    """The post-process that decodes :func:`tiny_model`'s outputs."""
    return FCOS3DPostProcess(strides=STRIDES, num_classes=NUM_CLASSES, num_attrs=NUM_ATTRS)


#: Input size of the whole-model tests (small: the shared CPU is slow on many thin convs).
MODEL_HW = (128, 192)


def training_batch(batch: int = 2, seed: int = 0, image_hw: tuple[int, int] = MODEL_HW) -> dict:
    K = intrinsic(fx=150.0, fy=155.0, cx=95.0, cy=63.0)
    scenes = [random_scene(4, seed + b, K=K, image_hw=image_hw) for b in range(batch)]
    gen = torch.Generator().manual_seed(seed)
    return {
        "img": torch.randn(batch, 3, *image_hw, generator=gen),
        "intrinsic": torch.stack([s["intrinsic"] for s in scenes]),
        "gt_boxes_3d": [s["gt_boxes_3d"] for s in scenes],
        "gt_labels": [s["gt_labels"] for s in scenes],
        "gt_attributes": [s["gt_attributes"] for s in scenes],
    }


def settle_batchnorm(model: nn.Module, batches: int = 2) -> nn.Module:
    """Running statistics from a few batches (cumulative average), as a trained model has:
    with the untouched 0/1 statistics of a fresh model, the 0.01-std head convs shrink the
    activations to ~1e-6 and int8 grids of that size are not what a real model exports."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    with torch.no_grad():
        for seed in range(batches):
            model.forward_raw(training_batch(seed=100 + seed)["img"])
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.train(was_training)
