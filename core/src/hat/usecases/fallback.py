"""`hat fallback`: keep the fewest, most sensitive layers off int8 until calibration meets an accuracy budget.

The work dir needs a float checkpoint. Every evaluation of the search
(:func:`hat.quant.fallback.search`) is a real calibration with a candidate ``precision``
list, in a scratch work dir of its own (``<work-dir>/fallback/step-NN/``, a copy of the
work dir's config and float checkpoint), then the calibration predictor's metric on the
validation data and, unless switched off, the exported model's latency at the compile
settings (``hat compile``'s measurement). The ranking is `hat analyze`'s, taken on the
first, all-int8 calibration.

When a step meets the budget, the choice is applied to the work dir: its stored config
(``config.yaml``, which every later command without ``--config`` uses) gets the rules with
``reason: sensitivity``, and the chosen step's calibration checkpoint takes the place of
the work dir's, so ``hat export``, ``check``, ``validate`` and ``train --stage qat`` use it
at once. What it replaces (calibration and qat checkpoints, the export) is moved under
``<work-dir>/fallback/replaced/``, never deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hat import console, workdir, workdir_config
from hat.deploy.files import atomic_write_text
from hat.errors import ConfigError, UserError
from hat.plugins import PluginHost, get_host
from hat.quant.fallback import Budget, Evaluation, FallbackResult, Step, search
from hat.quant.precision import CONFIG_KEY, FLOAT, INT16, PrecisionRule, parse_precision
from hat.usecases import deploy as commands
from hat.usecases import stages
from hat.usecases.stages import StageConfig

FALLBACK_DIR = "fallback"
REPORT_JSON = "fallback.json"
RULES_YAML = "precision.yaml"
REPLACED_DIR = "replaced"
CALIBRATION = "calibration"


@dataclass(frozen=True)
class MetricChoice:
    """The metric the budget is on: the calibration predictor's first metric."""

    name: str
    higher_is_better: bool


def fallback(
    stage_cfg: StageConfig,
    *,
    budget: float,
    max_layers: int = 8,
    batches: int = 8,
    to: Sequence[str] = (INT16, FLOAT),
    latency: bool = True,
    apply: bool = True,
    host: PluginHost | None = None,
) -> dict[str, Any]:
    """Run the search on ``stage_cfg``'s work dir; returns what ``fallback/fallback.json`` holds."""
    from hat.usecases.analyze import sensitivity

    host = host or get_host()
    work_dir = stage_cfg.work_dir
    float_checkpoint = workdir.checkpoint_path(work_dir, "float", workdir.BEST)
    if not float_checkpoint.is_file():
        raise UserError(
            f"no float checkpoint in {work_dir} ({float_checkpoint.name})",
            hint=f"run `{workdir.command_for(stage_cfg.task, 'train', work_dir)} --stage float` first",
        )
    metric = _metric_choice(stage_cfg, host)
    chosen_budget = Budget(budget, metric.higher_is_better)
    root = work_dir / FALLBACK_DIR
    base_rules = list(parse_precision(stage_cfg.config.get(CONFIG_KEY)).rules)
    runner = _StepRunner(stage_cfg, root, float_checkpoint, metric, latency, host)

    float_metric = runner.float_metric()
    limit = chosen_budget.threshold(float_metric)
    console.info(f"float {metric.name} {float_metric:.4f}; the budget needs {limit:.4f} or better")
    start = runner.evaluate(base_rules)
    console.info("ranking the layers on the all-int8 calibration (hat analyze's output SQNR ranking)")
    measured = sensitivity(runner.last_cfg, stage=CALIBRATION, batches=batches, host=host)
    ranked = [layer.name for layer in measured.report.ranked()]
    replayed = iter([start])

    def evaluate(rules: list[PrecisionRule]) -> Evaluation:
        return next(replayed, None) or runner.evaluate(rules)

    result = search(
        ranked,
        evaluate,
        float_metric=float_metric,
        budget=chosen_budget,
        base_rules=base_rules,
        max_layers=max_layers,
        precisions=tuple(to),
        on_step=lambda step: console.info(_describe(step, float_metric, metric)),
    )
    record = _record(stage_cfg, result, metric, ranked, max_layers)
    if result.met and apply and result.chosen.index > 0:
        record["applied"] = _apply(stage_cfg, runner.step_dir(result.chosen.index), root)
    elif result.met and result.chosen.index == 0:
        record["applied"] = None
        console.info("the all-int8 calibration already meets the budget: nothing to change")
    atomic_write_text(root / REPORT_JSON, json.dumps(record, indent=2) + "\n")
    atomic_write_text(root / RULES_YAML, yaml.safe_dump({CONFIG_KEY: record["rules"]}, sort_keys=False))
    record["files"] = {"json": str(root / REPORT_JSON), "rules": str(root / RULES_YAML)}
    return record


def _metric_choice(stage_cfg: StageConfig, host: PluginHost) -> MetricChoice:
    cfg = stage_cfg.config
    key = f"{CALIBRATION}_predictor"
    if key not in cfg:
        raise ConfigError(f"config {cfg.name} has no {key}: the fallback needs its metric")
    predictor = host.registry.build(cfg[key], path=key, locate=cfg.locate)
    metrics = list(getattr(predictor, "val_metrics", None) or [])
    if not metrics:
        raise ConfigError(f"{key} has no metrics: the budget needs one", where=cfg.locate(key))
    return MetricChoice(metrics[0].name, bool(metrics[0].higher_is_better))


class _StepRunner:
    """Scratch work dirs, one per evaluation: calibrate, predict, export and time."""

    def __init__(
        self,
        stage_cfg: StageConfig,
        root: Path,
        float_checkpoint: Path,
        metric: MetricChoice,
        latency: bool,
        host: PluginHost,
    ) -> None:
        self.stage_cfg, self.root, self.float_checkpoint = stage_cfg, root, float_checkpoint
        self.metric, self.latency, self.host = metric, latency, host
        self.count = 0
        self.last_cfg = stage_cfg

    def step_dir(self, index: int) -> Path:
        return self.root / f"step-{index:02d}"

    def _fresh(self, path: Path) -> None:
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        target = path / self.float_checkpoint.name
        try:
            os.link(self.float_checkpoint, target)  # read-only use: a hard link saves a copy per step
        except OSError:
            shutil.copy2(self.float_checkpoint, target)
        workdir_config.remember(path, self.stage_cfg.task, self.stage_cfg.config, "hat fallback")

    def _load(self, path: Path, rules: list[PrecisionRule]) -> StageConfig:
        value = json.dumps([rule.to_dict() for rule in rules])
        with console.quieted():  # "using the config this work dir was made with": the step's own, as intended
            return stages.load_stage_config(
                self.stage_cfg.task, overrides=[f"{CONFIG_KEY}={value}"], work_dir=path, host=self.host
            )

    def float_metric(self) -> float:
        path = self.root / "float"
        self._fresh(path)
        with console.quieted(), console.out.capture():
            predicted = stages.predict(self._load(path, self._base_rules()), "float", host=self.host)
        return self._read_metric(predicted, path)

    def _base_rules(self) -> list[PrecisionRule]:
        return list(parse_precision(self.stage_cfg.config.get(CONFIG_KEY)).rules)

    def evaluate(self, rules: list[PrecisionRule]) -> Evaluation:
        path = self.step_dir(self.count)
        self.count += 1
        self._fresh(path)
        cfg = self._load(path, rules)
        self.last_cfg = cfg
        started = time.perf_counter()
        with console.quieted(), console.out.capture():  # the step's own tables: the report has them
            stages.train(cfg, CALIBRATION, host=self.host)
            value = self._read_metric(stages.predict(cfg, CALIBRATION, host=self.host), path)
        extra: dict[str, Any] = {"calibrate_s": round(time.perf_counter() - started, 1), "work_dir": str(path)}
        latency_ms = None
        if self.latency:
            with console.quieted(), console.out.capture():
                commands.export(cfg, CALIBRATION, host=self.host)
                perf = commands.compile_model(cfg, host=self.host)
            latency_ms = float(perf["latency"]["int8"]["median_ms"])
            extra["float_latency_ms"] = float(perf["latency"]["float"]["median_ms"])
            extra["int8_flops_share"] = perf.get("int8_flops_share")
        return Evaluation(value, latency_ms, extra)

    def _read_metric(self, predicted: dict[str, Any], path: Path) -> float:
        metrics = predicted.get("metrics", {})
        if self.metric.name not in metrics:
            raise ConfigError(
                f"the predictor reported {sorted(metrics)}, not the budget's metric {self.metric.name!r}",
                where=str(path),
            )
        return float(metrics[self.metric.name])


def _describe(step: Step, float_metric: float, metric: MetricChoice) -> str:
    what = "all int8 (the config's own rules)" if step.layer is None else f"{step.layer} -> {step.precision}"
    ratio = step.evaluation.metric / float_metric if float_metric else float("nan")
    latency = "" if step.evaluation.latency_ms is None else f", {step.evaluation.latency_ms:.3f} ms"
    verdict = "kept" if step.kept else "not kept (no gain)"
    budget = ", meets the budget" if step.meets_budget and step.kept else ""
    value = f"{metric.name} {step.evaluation.metric:.4f} ({ratio:.2%} of float){latency}"
    return f"step {step.index}: {what}: {value}; {verdict}{budget}"


def _record(
    stage_cfg: StageConfig, result: FallbackResult, metric: MetricChoice, ranked: list[str], max_layers: int
) -> dict[str, Any]:
    start = result.start.evaluation
    steps = []
    for step in result.steps:
        entry = step.to_dict()
        if start.latency_ms and step.evaluation.latency_ms:
            entry["latency_vs_all_int8"] = step.evaluation.latency_ms / start.latency_ms
        steps.append(entry)
    return {
        "task": stage_cfg.task,
        "config": stage_cfg.config.name,
        "metric": {"name": metric.name, "higher_is_better": metric.higher_is_better},
        "float_metric": result.float_metric,
        "budget": {"relative": result.budget.relative, "threshold": result.budget.threshold(result.float_metric)},
        "met": result.met,
        "chosen_step": result.chosen.index,
        "rules": [rule.to_dict() for rule in result.rules],
        "ranked_layers": ranked,
        "max_layers": max_layers,
        "layers_tried": len({step.layer for step in result.steps if step.layer is not None}),
        "steps": steps,
    }


def _apply(stage_cfg: StageConfig, chosen: Path, root: Path) -> dict[str, Any]:
    """The chosen step's config and calibration checkpoint become the work dir's; what they replace is kept."""
    work_dir = stage_cfg.work_dir
    replaced = root / REPLACED_DIR / time.strftime("%Y%m%d-%H%M%S")
    moved: list[str] = []
    candidates = [p for stage in (CALIBRATION, "qat") for p in sorted(work_dir.glob(f"{stage}-checkpoint-*"))]
    export = workdir.export_dir(work_dir)
    for path in [*candidates, *([export] if export.exists() else [])]:
        replaced.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(replaced / path.name))
        moved.append(path.name)
    installed = []
    for path in sorted(chosen.glob(f"{CALIBRATION}-checkpoint-*")):
        part = work_dir / (path.name + ".part")
        shutil.copy2(path, part)
        os.replace(part, work_dir / path.name)
        installed.append(path.name)
    config = workdir_config.drop_meta(_stored_config(chosen))
    workdir_config.remember(work_dir, stage_cfg.task, config, "hat fallback")
    console.info(
        f"applied to {work_dir}: its config.yaml now holds the precision rules and its calibration checkpoint "
        f"is the chosen step's" + (f"; the replaced files are in {replaced}" if moved else "")
    )
    return {"installed": installed, "replaced": moved, "replaced_dir": str(replaced) if moved else None}


def _stored_config(path: Path):
    from hat.config import load_config

    remembered = workdir_config.recall(path)
    if remembered is None:  # written by every stage command run there
        raise RuntimeError(f"{path} has no config.yaml")
    return load_config(remembered.path, name=remembered.config, defaults={"work_dir": str(path)})


def describe_steps(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The steps as table rows (for the CLI)."""
    rows = []
    for step in record["steps"]:
        rows.append(
            {
                "step": step["step"],
                "layer": step["layer"] or "(all int8)",
                "precision": step["precision"] or "",
                "metric": step["metric"],
                "latency_ms": step["latency_ms"],
                "kept": step["kept"],
                "meets": step["meets_budget"],
            }
        )
    return rows
