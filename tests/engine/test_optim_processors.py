"""build_optimizer's per-name parameter groups, and MultiBatchProcessor's training step."""

from __future__ import annotations

import math

import pytest
import torch

from hat.builtins import _torch_types
from hat.engine import processors
from hat.engine.optim import build_optimizer
from hat.engine.processors import (
    MultiBatchProcessor,
    NonFiniteLoss,
    collect_loss_by_index,
    collect_loss_by_regex,
    flatten_losses,
)
from hat.errors import ConfigError
from hat.registry import Registry

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    for name, obj in _torch_types():
        registry.add(obj, name)
    registry.add_marked(processors)
    return registry


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 8)
        self.bn = torch.nn.BatchNorm1d(8)
        self.fc2 = torch.nn.Linear(8, 2)
        self.frozen = torch.nn.Linear(2, 2)
        for p in self.frozen.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frozen(self.fc2(torch.relu(self.bn(self.fc1(x)))))


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def _group_of(optimizer: torch.optim.Optimizer, param: torch.nn.Parameter) -> dict:
    found = [g for g in optimizer.param_groups if any(p is param for p in g["params"])]
    assert len(found) == 1, "every parameter belongs to exactly one group"
    return found[0]


# -- build_optimizer --------------------------------------------------------------------------


def test_groups_by_name_first_match_wins(registry) -> None:
    net = Net()
    cfg = {
        "type": "SGD",
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 1e-3,
        "params": {"bias": {"weight_decay": 0}, "fc2": {"lr_mult": 0.1}},
    }
    opt = build_optimizer(cfg, net, registry)
    assert isinstance(opt, torch.optim.SGD)
    default, bias, fc2 = opt.param_groups  # default first, then the rules in config order
    assert _ids(default["params"]) == _ids([net.fc1.weight, net.bn.weight])
    # fc2.bias matches "bias" (listed first) and "fc2": the first matching key wins
    assert _ids(bias["params"]) == _ids([net.fc1.bias, net.bn.bias, net.fc2.bias])
    assert _ids(fc2["params"]) == _ids([net.fc2.weight])

    assert default["lr"] == 0.2 and default["weight_decay"] == 1e-3 and default["momentum"] == 0.9
    assert bias["lr"] == 0.2 and bias["weight_decay"] == 0
    assert fc2["lr"] == pytest.approx(0.1 * 0.2) and fc2["weight_decay"] == 1e-3
    assert "lr_mult" not in fc2

    every = [p for g in opt.param_groups for p in g["params"]]
    assert len(every) == len(_ids(every)), "no parameter in two groups"
    assert _ids(every) == _ids(p for p in net.parameters() if p.requires_grad)
    assert not _ids(every) & _ids(net.frozen.parameters()), "frozen parameters are left out"


def test_rule_order_decides_the_group(registry) -> None:
    net = Net()
    cfg = {"type": "SGD", "lr": 0.2, "params": {"fc2": {"lr_mult": 0.1}, "bias": {"weight_decay": 0}}}
    opt = build_optimizer(cfg, net, registry)
    assert _group_of(opt, net.fc2.bias)["lr"] == pytest.approx(0.02)
    assert _ids(_group_of(opt, net.fc2.bias)["params"]) == _ids([net.fc2.weight, net.fc2.bias])
    assert _ids(_group_of(opt, net.fc1.bias)["params"]) == _ids([net.fc1.bias, net.bn.bias])


def test_rule_matching_nothing_is_harmless(registry) -> None:
    net = Net()
    cfg = {"type": "AdamW", "lr": 1e-3, "params": {"no_such_layer": {"lr_mult": 5.0}, "bias": {"weight_decay": 0}}}
    opt = build_optimizer(cfg, net, registry)
    assert isinstance(opt, torch.optim.AdamW)
    assert len(opt.param_groups) == 2
    assert all(g["lr"] == 1e-3 for g in opt.param_groups)
    # the rule that matched nothing is also not checked for lr_mult without lr
    build_optimizer({"type": "SGD", "params": {"no_such_layer": {"lr_mult": 2}}}, net, registry)


def test_no_rules_one_group_of_trainable_parameters(registry) -> None:
    net = Net()
    opt = build_optimizer({"type": "SGD", "lr": 0.1}, net, registry)
    assert len(opt.param_groups) == 1
    assert _ids(opt.param_groups[0]["params"]) == _ids(p for p in net.parameters() if p.requires_grad)


def test_lr_mult_without_base_lr_is_a_config_error(registry) -> None:
    with pytest.raises(ConfigError, match=r"optimizer\.params\.fc2\.lr_mult needs optimizer\.lr"):
        build_optimizer({"type": "SGD", "params": {"fc2": {"lr_mult": 0.1}}}, Net(), registry)


def test_params_must_be_a_mapping(registry) -> None:
    with pytest.raises(ConfigError, match="must map name patterns"):
        build_optimizer({"type": "SGD", "lr": 0.1, "params": ["bias"]}, Net(), registry, path="t.optimizer")


def test_group_options_act_on_the_step(registry) -> None:
    """weight_decay 0 on the bias group: with zero gradients only the other groups decay."""
    net = torch.nn.Linear(3, 3)
    cfg = {"type": "SGD", "lr": 1.0, "weight_decay": 0.5, "params": {"bias": {"weight_decay": 0}}}
    opt = build_optimizer(cfg, net, registry)
    w0, b0 = net.weight.detach().clone(), net.bias.detach().clone()
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(net.weight, w0 * 0.5)
    assert torch.equal(net.bias, b0)


# -- loss collectors ---------------------------------------------------------------------------


def test_collect_loss_by_index_on_a_tuple_output() -> None:
    a, b = torch.tensor(1.5), torch.tensor([1.0, 2.0])
    outputs = (torch.zeros(2, 3), {"a": a, "b": b})
    losses = collect_loss_by_index(1)(outputs)
    assert set(losses) == {"a", "b"}
    assert losses["a"] is a
    assert losses["b"].dim() == 0 and float(losses["b"]) == 3.0  # a non-scalar term is summed


def test_collect_loss_by_regex_on_a_dict_output() -> None:
    outputs = {
        "pred": torch.ones(3),
        "loss_cls": torch.tensor(1.0),
        "loss_box": {"l1": torch.tensor(2.0), "giou": torch.tensor(3.0)},
        "aux_loss": torch.tensor(100.0),
    }
    losses = collect_loss_by_regex("^loss")(outputs)
    assert {k: float(v) for k, v in losses.items()} == {"loss_cls": 1.0, "l1": 2.0, "giou": 3.0}
    with pytest.raises(TypeError, match="needs a dict output"):
        collect_loss_by_regex("^loss")((torch.ones(1),))


def test_flatten_losses_names_list_items() -> None:
    flat = flatten_losses({"loss": [torch.tensor(1.0), torch.tensor(2.0)]})
    assert {k: float(v) for k, v in flat.items()} == {"loss_0": 1.0, "loss_1": 2.0}
    with pytest.raises(TypeError, match="cannot read a loss"):
        flatten_losses({"loss": "nope"})


def test_processor_builds_from_config(registry) -> None:
    proc = registry.build(
        {
            "type": "MultiBatchProcessor",
            "grad_clip_norm": 1.0,
            "loss_collector": {"type": "collect_loss_by_index", "index": 1},
        }
    )
    assert isinstance(proc, MultiBatchProcessor) and proc.grad_clip_norm == 1.0
    assert set(proc.loss_collector((None, {"x": torch.tensor(1.0)}))) == {"x"}


# -- MultiBatchProcessor -----------------------------------------------------------------------


class SumLossModel(torch.nn.Module):
    """Linear model; a sum-reduced squared error, so the loss of a batch is the sum over samples."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(3, 2)
        self.scale = scale

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.fc(batch["x"])
        return {
            "pred": pred,
            "loss_mse": self.scale * ((pred - batch["y"]) ** 2).sum(),
            "loss_l1": (pred - batch["y"]).abs().sum(),
        }


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 3, generator=g), "y": torch.randn(n, 2, generator=g)}


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_sub_batches_accumulate_gradients_like_one_big_batch() -> None:
    first, second = _batch(4, 1), _batch(6, 2)
    joined = {k: torch.cat([first[k], second[k]]) for k in first}

    reference = SumLossModel()
    out = reference(joined)
    (out["loss_mse"] + out["loss_l1"]).backward()

    model = SumLossModel()
    frozen_opt = torch.optim.SGD(model.parameters(), lr=0.0)  # step changes nothing: grads stay to read
    for p in model.parameters():
        p.grad = torch.full_like(p, 123.0)  # stale gradients must be cleared first
    outputs, losses = MultiBatchProcessor(loss_collector=collect_loss_by_regex("^loss"))(
        model, [first, second], CPU, optimizer=frozen_opt
    )
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-5), "accumulated gradient differs from the joint batch"
    assert set(losses) == {"loss_mse", "loss_l1"}
    assert losses["loss_mse"] == pytest.approx(out["loss_mse"].item(), rel=1e-5)
    assert losses["loss_l1"] == pytest.approx(out["loss_l1"].item(), rel=1e-5)
    assert outputs["pred"].shape == (6, 2), "outputs are those of the last sub-batch"


def test_training_step_updates_with_sgd() -> None:
    model = SumLossModel()
    batch = _batch(5, 3)
    reference = SumLossModel()
    out = reference(batch)
    (out["loss_mse"] + out["loss_l1"]).backward()
    before = _params(model)
    MultiBatchProcessor()(model, batch, CPU, optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
    for p, p0, q in zip(model.parameters(), before, reference.parameters(), strict=True):
        assert torch.allclose(p.detach(), p0 - 0.01 * q.grad, atol=1e-6)


@pytest.mark.parametrize("clip_factor", [0.1, 10.0], ids=["clipped", "under-the-limit"])
def test_grad_clip_bounds_the_update_norm(clip_factor: float) -> None:
    batch = _batch(8, 4)
    probe = SumLossModel(scale=50.0)
    out = probe(batch)
    (out["loss_mse"] + out["loss_l1"]).backward()
    grad_norm = math.sqrt(sum(float((p.grad**2).sum()) for p in probe.parameters()))
    assert grad_norm > 1.0
    clip = clip_factor * grad_norm

    model = SumLossModel(scale=50.0)
    before = _params(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.0)
    MultiBatchProcessor(grad_clip_norm=clip)(model, batch, CPU, optimizer=opt)
    update = math.sqrt(
        sum(float(((p.detach() - p0) ** 2).sum()) for p, p0 in zip(model.parameters(), before, strict=True))
    )
    assert update == pytest.approx(min(clip, grad_norm), rel=1e-4)


def test_grad_clip_norm_must_be_positive() -> None:
    with pytest.raises(ValueError, match="grad_clip_norm must be > 0"):
        MultiBatchProcessor(grad_clip_norm=0)


class BadLossModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.fc(batch["x"]).sum()
        return {
            "loss_ok": pred * 0 + 1.0,
            "loss_nan": pred * float("nan"),
            "loss_inf": pred * 0 + float("inf"),
        }


def test_non_finite_loss_names_step_and_terms_and_does_not_step() -> None:
    model = BadLossModel()
    before = _params(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    with pytest.raises(NonFiniteLoss) as info:
        MultiBatchProcessor()(model, _batch(4, 5), CPU, optimizer=opt, step=17)
    exc = info.value
    assert exc.step == 17
    assert set(exc.terms) == {"loss_nan", "loss_inf"}
    assert math.isnan(exc.terms["loss_nan"]) and exc.terms["loss_inf"] == math.inf
    message = str(exc)
    assert "non-finite loss at step 17" in message and "loss_nan=nan" in message and "loss_inf=inf" in message
    assert "loss_ok" not in message
    assert "no checkpoint had been written yet" in message
    assert all(torch.equal(p.detach(), p0) for p, p0 in zip(model.parameters(), before, strict=True))
    assert "the last good checkpoint is intact: /w/last.pth" in str(NonFiniteLoss(3, {"l": math.nan}, "/w/last.pth"))


def test_evaluation_step_leaves_weights_and_grads_alone() -> None:
    model = SumLossModel()
    grads = []
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
        grads.append(p.grad)
    before = _params(model)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    outputs, losses = MultiBatchProcessor(need_grad_update=False)(
        model, [_batch(2, 6), _batch(3, 7)], CPU, optimizer=opt
    )
    assert losses == {}
    assert outputs["pred"].shape == (3, 2) and not outputs["pred"].requires_grad
    for p, p0, g in zip(model.parameters(), before, grads, strict=True):
        assert torch.equal(p.detach(), p0)
        assert p.grad is g and bool((p.grad == 7.0).all())


def test_training_step_needs_an_optimizer() -> None:
    with pytest.raises(RuntimeError, match="needs an optimizer"):
        MultiBatchProcessor()(SumLossModel(), _batch(2, 8), CPU)
