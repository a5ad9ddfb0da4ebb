"""A small regression task that drives the engine's real code paths in tests.

A registered dataset, model and metric plus a task spec and config, registered through
the same hooks a real plugin uses. ``run_toy`` runs the real CLI with this plugin
loaded, in a subprocess or under torchrun.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import torch

from hat.engine.callbacks.base import Callback
from hat.hookspecs import TaskSpec, hookimpl
from hat.metrics import Metric
from hat.plugins import PluginHost
from hat.quant import DeQuantStub, QuantStub
from hat.registry import register_type

CONFIG_DIR = Path(__file__).parent / "configs"
DIST = "hat-engine-toy"


@register_type("ToyRegressionData")
class ToyRegressionData(torch.utils.data.Dataset):
    """y = x . w + 0.5 with a fixed w; deterministic in (seed, index)."""

    def __init__(self, size: int = 64, dim: int = 4, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.x = torch.randn(size, dim, generator=generator)
        weights = torch.linspace(-1.0, 1.0, dim)
        self.y = (self.x @ weights + 0.5).unsqueeze(1)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[index], "y": self.y[index]}


@register_type("ToyRegressor")
class ToyRegressor(torch.nn.Module):
    """QuantStub, Linear-(BN)-ReLU, Linear, DeQuantStub; MSE loss when targets are given.

    Quantization boundaries are marked so every stage (calibration, QAT, export,
    int_infer) runs on it for real. ``nan_at_step`` makes the loss NaN from that training
    forward on (the non-finite-loss test); ``use_bn`` adds a BatchNorm (SyncBatchNorm
    and BN-folding tests).
    """

    def __init__(self, dim: int = 4, hidden: int = 16, use_bn: bool = False, nan_at_step: int | None = None) -> None:
        super().__init__()
        self.quant = QuantStub()
        layers = [torch.nn.Linear(dim, hidden)]
        if use_bn:
            layers.append(torch.nn.BatchNorm1d(hidden))
        self.body = torch.nn.Sequential(*layers, torch.nn.ReLU())
        self.head = torch.nn.Linear(hidden, 1)
        self.dequant = DeQuantStub()
        self.nan_at_step = nan_at_step
        self.train_forwards = 0

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pred = self.dequant(self.head(self.body(self.quant(batch["x"]))))
        out = {"pred": pred}
        if "y" in batch:
            loss = torch.nn.functional.mse_loss(pred, batch["y"])
            if self.training:
                if self.nan_at_step is not None and self.train_forwards >= self.nan_at_step:
                    loss = loss * float("nan")
                self.train_forwards += 1
            out["loss"] = loss
        return out


@register_type("ToyTwoGraphRegressor")
class ToyTwoGraphRegressor(ToyRegressor):
    """The toy regressor deployed as two graphs with host code between them (:class:`ToyChain`).

    Graph ``model`` (``deploy: model``): ``x -> pred, hidden``; graph ``step`` (``deploy:
    step``): ``hidden -> next_state``, a Linear of its own that the training model runs
    too (so calibration sees it) but whose output takes no part in the loss.
    """

    def __init__(self, dim: int = 4, hidden: int = 16, deploy: bool | str = False) -> None:
        super().__init__(dim, hidden)
        self.deploy = deploy
        self.hidden_quant = QuantStub()
        self.update = torch.nn.Linear(hidden, 2)
        self.dequant_hidden = DeQuantStub()
        self.dequant_state = DeQuantStub()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.deploy == "step":
            return {"next_state": self.dequant_state(self.update(self.hidden_quant(batch["hidden"])))}
        hidden = self.body(self.quant(batch["x"]))
        out = {"pred": self.dequant(self.head(hidden)), "hidden": self.dequant_hidden(hidden)}
        if self.deploy:
            return out
        # The step graph runs too, so calibration sees (and calibrates) it; it takes no part in the loss.
        state = self.dequant_state(self.update(self.hidden_quant(out["hidden"])))
        if "y" in batch:
            out["loss"] = torch.nn.functional.mse_loss(out["pred"], batch["y"]) + 0.0 * state.sum()
        return out


@register_type("ToyChain")
class ToyChain:
    """Host code between the toy's two graphs: each batch's ``pred`` plus a state carried from
    the previous batch (``step``'s output, averaged), so the result depends on the order."""

    def __init__(self, weight: float = 0.01) -> None:
        self.weight = weight
        self.reset()

    def reset(self) -> None:
        self.state = 0.0
        self.calls: list[str] = []

    def __call__(self, run_graph: Any, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = run_graph("model", {"x": batch["x"]})
        self.calls.append("model")
        pred = torch.as_tensor(out["pred"]) + self.weight * self.state
        step = run_graph("step", {"hidden": torch.as_tensor(out["hidden"])})
        self.calls.append("step")
        self.state = float(torch.as_tensor(step["next_state"]).mean())
        return {"pred": pred}


@register_type("ToyMSE")
class ToyMSE(Metric):
    name = "mse"
    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("sq_sum", torch.tensor(0.0, dtype=torch.float64))
        self.add_state("count", torch.tensor(0, dtype=torch.int64))

    def update(self, batch: Any, outputs: Any) -> None:
        diff = (outputs["pred"] - batch["y"]).double()
        self.sq_sum += (diff**2).sum()
        self.count += diff.numel()

    def _compute(self) -> dict[str, float]:
        return {"mse": float(self.sq_sum / self.count.clamp(min=1))}


@register_type("KillSwitch")
class KillSwitch(Callback):
    """SIGKILLs the process when HAT_TEST_KILL is set: at the end of 1-based epoch
    ``epoch``, or right after optimizer step ``step``."""

    def __init__(self, epoch: int | None = None, step: int | None = None) -> None:
        self.epoch = epoch
        self.step = step

    def _armed(self) -> bool:
        return os.environ.get("HAT_TEST_KILL") == "1"

    def on_step_end(self, state: Any, batch: Any = None, outputs: Any = None) -> None:
        if self._armed() and state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, state: Any) -> None:
        if self._armed() and state.epoch + 1 == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class ToyEnginePlugin:
    __name__ = "toy_engine"

    @hookimpl
    def hat_register(self, registry) -> None:
        for cls in (ToyRegressionData, ToyRegressor, ToyTwoGraphRegressor, ToyChain, ToyMSE, KillSwitch):
            registry.add(cls)

    @hookimpl
    def hat_tasks(self) -> list[TaskSpec]:
        return [TaskSpec(name="toy", summary="engine test task", default_config="toy_engine", dataset="none")]

    @hookimpl
    def hat_configs(self) -> dict[str, Path]:
        return {p.stem: p for p in CONFIG_DIR.glob("*.yaml")}


def make_host() -> PluginHost:
    return PluginHost(entry_points=False, extra=[(ToyEnginePlugin(), DIST)])
