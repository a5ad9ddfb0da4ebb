"""FLOPs and parameters against hand counts (FLOPs = 2 x MACs, bias adds not counted)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from hat.engine.calops import FLOPS_DEFINITION, OWN_ROW, count_model, human_units


class MatmulAttention(nn.Module):
    """Hand-written attention: Linear(4 -> 24) for q, k, v; 2 heads of width 4; two matmuls."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 24)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        q, k, v = self.qkv(tokens).reshape(b, n, 3, 2, 4).permute(2, 0, 3, 1, 4)  # each (b, 2, n, 4)
        scores = torch.matmul(q, k.transpose(-1, -2)) * 0.5
        return torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, n, 8)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
        self.attn = MatmulAttention()
        self.head = nn.Linear(8, 10)
        self.unused = nn.Linear(5, 5)
        self.mix = nn.Parameter(torch.eye(10))  # the root's own parameter and matmul
        self.seen_training: bool | None = None

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        self.seen_training = self.training
        x = self.up(self.stem(inputs["img"]).relu())  # (1, 4, 32, 32)
        tokens = F.adaptive_avg_pool2d(x, 4).flatten(2).transpose(1, 2)  # (1, 16, 4)
        logits = self.head(self.attn(tokens).mean(1))  # (1, 10)
        return logits @ self.mix


# Hand counts, MACs x 2:
STEM = 2 * (8 * 16 * 16) * (3 * 3 * 3)  # every output value: 3x3 window over 3 channels = 110_592
UP = 2 * (16 * 16 * 8) * (4 * 4 * 4)  # every input value scatters into a 4x4 window of 4 channels = 262_144
QKV = 2 * 16 * 4 * 24  # 16 tokens x (4 -> 24) = 3_072
SCORES = 2 * (2 * 16 * 16) * 4  # 2 heads, 16x16 scores, width 4 = 4_096
WEIGHTED = 2 * (2 * 16 * 4) * 16  # 2 heads, 16x4 outputs, 16 keys = 4_096
HEAD = 2 * 8 * 10  # = 160
OWN = 2 * 10 * 10  # (1, 10) @ (10, 10) = 200


def _report():
    model = Net().train()
    report = count_model(model, {"img": torch.randn(1, 3, 16, 16)})
    return model, report


def test_hand_counted_flops_per_module_and_total() -> None:
    model, report = _report()
    rows = {row.name: row for row in report.per_module}
    assert list(rows) == ["stem", "up", "attn", "head", "unused", OWN_ROW]
    assert rows["stem"].flops == STEM == 110_592
    assert rows["up"].flops == UP == 262_144
    assert rows["attn"].flops == QKV + SCORES + WEIGHTED == 11_264
    assert rows["head"].flops == HEAD
    assert rows["unused"].flops == 0
    assert rows[OWN_ROW].flops == OWN
    assert report.total_flops == STEM + UP + QKV + SCORES + WEIGHTED + HEAD + OWN == 384_360
    assert sum(row.flops for row in report.per_module) == report.total_flops
    assert sum(row.flops_share for row in report.per_module) == pytest.approx(1.0)
    assert rows["up"].flops_share == pytest.approx(262_144 / 384_360)
    assert report.flops_definition == FLOPS_DEFINITION


def test_params_per_module_include_uncalled_blocks_and_own() -> None:
    model, report = _report()
    rows = {row.name: row.params for row in report.per_module}
    assert rows == {
        "stem": 8 * 3 * 3 * 3 + 8,
        "up": 8 * 4 * 4 * 4 + 4,
        "attn": 4 * 24 + 24,
        "head": 8 * 10 + 10,
        "unused": 5 * 5 + 5,
        OWN_ROW: 10 * 10,
    }
    assert report.total_params == sum(p.numel() for p in model.parameters()) == 1080
    assert sum(rows.values()) == report.total_params


def test_runs_in_eval_mode_and_restores_the_flag() -> None:
    model, _ = _report()
    assert model.seen_training is False
    assert model.training is True


def test_bias_does_not_change_conv_flops() -> None:
    x = {"x": torch.randn(1, 3, 16, 16)}

    class Wrap(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=bias)

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.conv(inputs["x"])

    assert count_model(Wrap(True), x).total_flops == count_model(Wrap(False), x).total_flops == STEM


def test_scaled_dot_product_attention_counts_its_two_matmuls_on_cpu() -> None:
    class Sdpa(nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            q = inputs["q"]
            return F.scaled_dot_product_attention(q, q, q)

    report = count_model(Sdpa(), {"q": torch.randn(1, 2, 16, 4)})
    assert report.total_flops == SCORES + WEIGHTED == 8_192
    assert [(r.name, r.flops, r.params) for r in report.per_module] == [(OWN_ROW, 8_192, 0)]


def test_child_calling_a_sibling_is_charged_once_to_the_outer_child() -> None:
    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.wrapper = Wrapper(self.block)  # a top-level child that calls its sibling

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.wrapper(self.block(inputs["x"]))

    report = count_model(Shared(), {"x": torch.randn(2, 4)})
    one_call = 2 * 2 * 4 * 4  # (2, 4) @ (4, 4)
    rows = {r.name: r for r in report.per_module}
    assert report.total_flops == 2 * one_call
    assert rows["block"].flops == one_call and rows["wrapper"].flops == one_call
    assert rows["block"].params == 20 and rows["wrapper"].params == 0  # shared weights charged once
    assert report.total_params == 20


def test_report_serializes_and_renders_with_units() -> None:
    _, report = _report()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total_flops"] == 384_360 and data["total_params"] == 1080
    assert data["per_module"][0] == {"name": "stem", "flops": STEM, "params": 224, "flops_share": STEM / 384_360}
    table = report.render_table()
    assert isinstance(table, Table)
    console = Console(width=120, record=True)
    console.print(table)
    text = console.export_text()
    assert "110.59K" in text and "384.36K" in text and "1.08K" in text and "2 x MACs" in text


def test_human_units() -> None:
    assert human_units(999) == "999"
    assert human_units(1_500) == "1.50K"
    assert human_units(2_340_000) == "2.34M"
    assert human_units(7_000_000_000) == "7.00G"
    assert human_units(0) == "0"
