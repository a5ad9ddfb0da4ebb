"""FLOPs and parameter counts of a model on one input, per top-level block.

Counting uses torch's own :class:`torch.utils.flop_counter.FlopCounterMode`, which
sees the aten operators actually dispatched, so it follows whatever a ``forward`` does
(Python control flow, ``torch.matmul`` in attention) without a per-layer table to keep
in sync. What it counts, checked by the tests:

* convolutions, transposed ones included (bias adds are not counted);
* ``mm``/``addmm``/``bmm``/``matmul`` (so ``nn.Linear`` and hand-written attention on
  3D/4D tensors), again without the bias add;
* ``scaled_dot_product_attention`` as its two matmuls. torch registers formulas only
  for the CUDA kernels; the CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``)
  is added here with torch's own ``sdpa_flop_count`` so CPU and GPU counts agree.

Everything elementwise (activations, normalization, softmax, pooling, bias adds) counts
as zero, which is the usual convention: those costs are small next to the matmuls and
depend on fusion. One multiply-add is two FLOPs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from hat.registry import Registry

FLOPS_DEFINITION = "FLOPs = 2 x MACs (one multiply-add = 2 FLOPs)"
#: Row name for parameters and compute that belong to the root module itself.
OWN_ROW = "(own)"


@dataclass
class ModuleRow:
    """One top-level child of the model (or the root's own share)."""

    name: str
    flops: int
    params: int
    flops_share: float


@dataclass
class CalopsReport:
    total_flops: int
    total_params: int
    per_module: list[ModuleRow] = field(default_factory=list)
    flops_definition: str = FLOPS_DEFINITION

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output (``hat calops --json``, perf reports)."""
        return asdict(self)

    def render_table(self) -> Table:
        """A rich table, one row per top-level block, with K/M/G units and a total row."""
        table = Table(title="FLOPs and parameters", caption=self.flops_definition, show_footer=True)
        table.add_column("module", footer="total")
        table.add_column("FLOPs", justify="right", footer=human_units(self.total_flops))
        table.add_column("share", justify="right", footer="100.0%" if self.total_flops else "-")
        table.add_column("params", justify="right", footer=human_units(self.total_params))
        for row in self.per_module:
            table.add_row(row.name, human_units(row.flops), f"{row.flops_share:.1%}", human_units(row.params))
        return table


def human_units(value: float) -> str:
    """``1234567`` -> ``"1.23M"``: decimal K/M/G/T, as FLOPs and parameter counts are quoted."""
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:g}"


def _cpu_sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _extra_formulas() -> dict[Any, Any]:
    """Formulas torch lacks; looked up by name so an older or newer torch without the op still works."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_sdpa_flops} if op is not None else {}


class _ChildTracker:
    """Attributes the counter's running total to whichever top-level child is executing.

    Only the outermost active child is charged, so a child that calls another top-level
    child (a shared block) is not counted twice; what runs outside any child goes to the
    root's own row.
    """

    def __init__(self, counter: FlopCounterMode, children: dict[str, torch.nn.Module]) -> None:
        self.counter = counter
        self.flops = dict.fromkeys(children, 0)
        self._active: str | None = None
        self._start = 0
        self._depth = 0
        self._handles = []
        for name, child in children.items():
            self._handles.append(child.register_forward_pre_hook(self._enter(name)))
            self._handles.append(child.register_forward_hook(self._leave(name), always_call=True))

    def _enter(self, name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any) -> None:
            if self._depth == 0:
                self._active, self._start = name, self.counter.get_total_flops()
            self._depth += 1

        return hook

    def _leave(self, name: str) -> Any:
        def hook(_module: torch.nn.Module, _inputs: Any, _output: Any) -> None:
            self._depth -= 1
            if self._depth == 0 and self._active is not None:
                self.flops[self._active] += self.counter.get_total_flops() - self._start
                self._active = None

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def _params_per_child(model: torch.nn.Module, children: dict[str, torch.nn.Module]) -> tuple[dict[str, int], int]:
    """Parameters of each child, a shared one charged to the first child that owns it."""
    seen: set[int] = set()
    counts: dict[str, int] = {}
    for name, child in children.items():
        count = 0
        for param in child.parameters():
            if id(param) not in seen:
                seen.add(id(param))
                count += param.numel()
        counts[name] = count
    own = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    return counts, own


def count_model(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> CalopsReport:
    """Run ``model(inputs)`` once in eval mode without gradients and count FLOPs and parameters.

    Eval mode matters: some heads skip or add work in training (losses, target
    assignment), and the deployed model runs in eval. The model's train/eval flag is
    restored afterwards. Parameters of blocks the forward never calls still count,
    because they are still in the checkpoint and the deployed graph's weights.
    """
    children = dict(model.named_children())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    tracker = _ChildTracker(counter, children)
    try:
        with torch.no_grad(), counter:
            model(inputs)
    finally:
        tracker.remove()
        model.train(was_training)

    total_flops = counter.get_total_flops()
    params, own_params = _params_per_child(model, children)
    own_flops = total_flops - sum(tracker.flops.values())

    def share(flops: int) -> float:
        return flops / total_flops if total_flops else 0.0

    rows = [ModuleRow(name, tracker.flops[name], params[name], share(tracker.flops[name])) for name in children]
    if own_flops or own_params:
        rows.append(ModuleRow(OWN_ROW, own_flops, own_params, share(own_flops)))
    total_params = sum(p.numel() for p in model.parameters())
    return CalopsReport(total_flops=total_flops, total_params=total_params, per_module=rows)


def calops_for_config(config: Any, registry: Registry) -> CalopsReport:
    """`hat calops`: the config's deploy model at its deploy input shape.

    ``registry`` builds the model (the caller's plugin host's: the engine does not look it up).
    """
    from hat.engine.deploy_model import build_deploy_model

    model, inputs = build_deploy_model(config, registry)
    return count_model(model, inputs)
