"""The stage protocol: float -> calibration -> qat -> (export) -> int_infer.

``hat train TASK --stage S`` builds the config's ``S_trainer`` and runs it;
``hat predict TASK --stage S`` builds ``S_predictor``. Every stage writes into the
work directory (``./hat-work/<config name>`` unless ``--work-dir``), which configs refer
to as ``${work_dir}``; a stage's ``LoadCheckpoint`` converters read the previous
stage's checkpoints from there. Missing prerequisites fail before any work, naming the
file and the command that makes it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat import console, distributed, workdir_config
from hat.config import Config, load_config
from hat.engine.context import RunContext
from hat.errors import ConfigError, UserError
from hat.plugins import PluginHost, get_host
from hat.usecases.task_config import load_task_config, resolve_config_ref
from hat.workdir import command_that_makes, default_work_dir

TRAIN_STAGES = ("float", "calibration", "qat")
PREDICT_STAGES = ("float", "calibration", "qat", "int_infer")
STAGES = PREDICT_STAGES


@dataclass
class StageConfig:
    task: str
    config: Config
    work_dir: Path


def load_stage_config(
    task: str,
    *,
    config_ref: str | None = None,
    overrides: Iterable[str] = (),
    work_dir: Path | None = None,
    host: PluginHost | None = None,
) -> StageConfig:
    """The config a stage command runs: the task's default (or ``config_ref``), with
    ``work_dir`` and ``task`` available to ``${...}``."""
    host = host or get_host()
    ref = config_ref or task
    if config_ref is None:
        host.task(task)  # a clear "unknown task" error before looking for configs
    _, name = resolve_config_ref(ref, host)
    chosen = Path(work_dir) if work_dir is not None else default_work_dir(name)
    extra = [f"work_dir={chosen}"] if work_dir is not None else []
    defaults = {"work_dir": str(chosen), "task": task}
    remembered = workdir_config.recall(chosen)
    if remembered is not None and remembered.task != task:
        raise UserError(
            f"work dir {chosen} was made by task {remembered.task!r}, not {task!r}",
            where=str(remembered.path),
            hint=f"run `hat ... {remembered.task}` on it, or choose another --work-dir",
        )
    if remembered is not None and config_ref is None:
        cfg = workdir_config.drop_meta(
            load_config(remembered.path, overrides=[*extra, *overrides], defaults=defaults, name=remembered.config)
        )
        console.info(f"using the config this work dir was made with: {remembered.config} ({remembered.path})")
    else:
        cfg = load_task_config(ref, [*extra, *overrides], host=host, defaults=defaults)
        if remembered is not None:
            stored = workdir_config.drop_meta(load_config(remembered.path, defaults=defaults))
            workdir_config.check_same_model(cfg, stored, chosen, remembered)
    _check_target(cfg)
    _check_precision(cfg)
    _check_symmetry(cfg)
    _check_seed(cfg)
    return StageConfig(task=task, config=cfg, work_dir=Path(cfg.get("work_dir", chosen)))


def _check_seed(cfg: Config) -> None:
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(
            f"seed must be a non-negative integer, got {seed!r}", where=cfg.locate("seed"), hint="e.g. --set seed=0"
        )


def remember_config(stage_cfg: StageConfig, command: str) -> None:
    """Store the config a stage command runs with in its work dir (rank 0 only)."""
    if distributed.is_main():
        workdir_config.remember(stage_cfg.work_dir, stage_cfg.task, stage_cfg.config, command)


def _check_target(cfg: Config) -> None:
    """A misspelt ``deploy_target`` fails here, naming the line, before any work."""
    from hat.quant.target import CONFIG_KEY, get_target

    try:
        get_target(cfg.get(CONFIG_KEY))
    except ValueError as exc:
        raise ConfigError(
            str(exc),
            where=cfg.locate(CONFIG_KEY) or str(cfg.path),
            hint="portable runs exactly on every x86 CPU; vnni only where onnxruntime uses VNNI kernels",
        ) from None


def _check_precision(cfg: Config) -> None:
    """A malformed ``precision`` rule fails here, naming the entry and its line, before any work.

    Whether each glob matches a module is checked when the model is converted."""
    from hat.quant.precision import CONFIG_KEY, PrecisionError, parse_precision

    try:
        parse_precision(cfg.get(CONFIG_KEY))
    except PrecisionError as exc:
        key = CONFIG_KEY if exc.index is None else f"{CONFIG_KEY}.{exc.index}"
        raise ConfigError(
            str(exc),
            where=cfg.locate(key) or str(cfg.path),
            hint="each rule is {modules: GLOB, activation: int8|int16|float, weight: ..., reason: configured}",
        ) from None


def _check_symmetry(cfg: Config) -> None:
    """A bad top-level ``activation_symmetry`` fails here, and so does one the stages would not use.

    ``hat_stages`` hands it to calibration and QAT through ``qconfig_calibration`` and
    ``qconfig_qat``; a config written before the key existed (a work dir's ``config.yaml``)
    lacks that link, and the value would silently do nothing.
    """
    from hat.quant.qconfig import DEFAULT_SYMMETRY, SYMMETRIES, SYMMETRY_KEY

    wanted = cfg.get(SYMMETRY_KEY)
    if wanted is None:
        return
    where = cfg.locate(SYMMETRY_KEY) or str(cfg.path)
    if wanted not in SYMMETRIES:
        raise ConfigError(
            f"{SYMMETRY_KEY} must be one of {', '.join(SYMMETRIES)}, got {wanted!r}",
            where=where,
            hint="asymmetric: uint8 with a zero point for activations not after a ReLU; symmetric: zero point 0",
        )
    for section in ("qconfig_calibration", "qconfig_qat"):
        used = (cfg.get(section) or {}).get(SYMMETRY_KEY, DEFAULT_SYMMETRY)
        if used != wanted:
            raise ConfigError(
                f"{SYMMETRY_KEY} is {wanted!r} but {section} quantizes {used!r}",
                where=where,
                hint=f"pass --set {section}.{SYMMETRY_KEY}={wanted} too (this config predates the top-level key), "
                f"or run with --config to use the task's current config",
            )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _runner_key(config: Config, stage: str, kind: str) -> str:
    key = f"{stage}_{kind}"
    if key not in config:
        available = sorted(k for k in config.data if k.endswith(f"_{kind}"))
        raise ConfigError(
            f"config {config.name} has no {key!r}, so it cannot run stage {stage!r}",
            where=str(config.path),
            hint=f"it defines: {', '.join(available) or 'none'}",
        )
    return key


def _required_checkpoints(node: Any, path: str) -> list[tuple[str, str]]:
    """(key path, checkpoint path) of every LoadCheckpoint in a raw config subtree."""
    found: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        if node.get("type") == "LoadCheckpoint" and node.get("checkpoint_path"):
            found.append((path, str(node["checkpoint_path"])))
        for key, value in node.items():
            found += _required_checkpoints(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _required_checkpoints(value, f"{path}.{i}")
    return found


def check_prerequisites(stage_cfg: StageConfig, key: str) -> None:
    """Fail before any work if a checkpoint this stage loads does not exist, or was
    calibrated / QAT-trained under other ``precision`` rules."""
    required = _required_checkpoints(stage_cfg.config[key], key)
    for key_path, checkpoint in required:
        if not Path(checkpoint).is_file():
            command = command_that_makes(Path(checkpoint), stage_cfg.task)
            raise UserError(
                f"stage {key.rsplit('_', 1)[0]!r} needs {checkpoint}, which does not exist",
                where=stage_cfg.config.locate(key_path) or key_path,
                hint=f"run `{command}` first" if command else "check the checkpoint_path in the config",
            )
    check_trained_precision(stage_cfg, [Path(checkpoint) for _, checkpoint in required])


#: Checkpoints that hold quantizer grids, by the names the work dir gives them.
_QUANT_CHECKPOINTS = tuple(f"{stage}-checkpoint-" for stage in ("calibration", "qat"))


def check_trained_precision(stage_cfg: StageConfig, checkpoints: Iterable[Path]) -> None:
    """A calibration / qat checkpoint is used under the ``precision`` rules it was trained with.

    The rules decide which grids calibration fitted and QAT trained on, and the scales are
    stored alike at every precision: under other rules a checkpoint would load without a
    complaint and run (or deploy) grids it was never evaluated with, or fail deep in a
    forward. Only the work dir's calibration-/qat- checkpoints are read (a float one holds
    no grids); the rules are compared without ``reason``.
    """
    from hat.engine.checkpoint_io import load_checkpoint
    from hat.quant.precision import CONFIG_KEY, precision_of_config
    from hat.workdir import command_for

    wanted = precision_of_config(stage_cfg.config.data)
    for path in checkpoints:
        if not path.name.startswith(_QUANT_CHECKPOINTS):
            continue
        payload = load_checkpoint(path)
        if not isinstance(payload.get("config"), dict):
            continue
        trained = precision_of_config(payload["config"])
        if trained != wanted:
            stage = payload.get("stage", "calibration")
            retrain = command_for(stage_cfg.task, f"train --stage {stage}", stage_cfg.work_dir, stage_cfg.config.name)
            raise UserError(
                f"{path} was {stage}-trained with {CONFIG_KEY} {trained or '[] (all int8)'}, "
                f"but this run asks for {wanted or '[] (all int8)'}",
                hint=f"use the {CONFIG_KEY} rules it was trained with, or re-run `{retrain}` with the new rules first",
            )


def _context(stage_cfg: StageConfig, stage: str, key: str, host: PluginHost, resume: bool = False) -> RunContext:
    cfg = stage_cfg.config
    return RunContext(
        task=stage_cfg.task,
        stage=stage,
        work_dir=stage_cfg.work_dir,
        config=cfg.data,
        registry=host.registry,
        seed=int(cfg.get("seed", 0)),
        resume=resume,
        locate=cfg.locate,
        path=key,
        config_name=cfg.name,
        quant_backends=host.quant_backends.items,
        compile_backends=host.compile_backends.items,
    )


def _build(stage_cfg: StageConfig, key: str, host: PluginHost) -> Any:
    cfg = stage_cfg.config
    return host.registry.build(cfg[key], path=key, locate=cfg.locate)


def train(stage_cfg: StageConfig, stage: str, *, resume: bool = False, host: PluginHost | None = None) -> Any:
    """Run ``<stage>_trainer``; returns its final loop state."""
    host = host or get_host()
    if stage not in TRAIN_STAGES:
        raise UserError(f"cannot train stage {stage!r}", hint=f"choose one of {', '.join(TRAIN_STAGES)}")
    key = _runner_key(stage_cfg.config, stage, "trainer")
    check_prerequisites(stage_cfg, key)
    distributed.init_from_env()
    ctx = _context(stage_cfg, stage, key, host, resume)
    seed_everything(ctx.seed)
    remember_config(stage_cfg, f"hat train {stage_cfg.task} --stage {stage}")
    runner = _build(stage_cfg, key, host)
    if not hasattr(runner, "fit"):
        raise ConfigError(
            f"{key} built a {type(runner).__name__}, which cannot train", where=stage_cfg.config.locate(key)
        )
    return runner.fit(ctx)


def predict(stage_cfg: StageConfig, stage: str, *, host: PluginHost | None = None) -> dict[str, Any]:
    """Run ``<stage>_predictor``; returns the predict JSON's content."""
    host = host or get_host()
    if stage not in PREDICT_STAGES:
        raise UserError(f"unknown stage {stage!r}", hint=f"choose one of {', '.join(PREDICT_STAGES)}")
    key = _runner_key(stage_cfg.config, stage, "predictor")
    check_prerequisites(stage_cfg, key)
    distributed.init_from_env()
    ctx = _context(stage_cfg, stage, key, host)
    seed_everything(ctx.seed)
    remember_config(stage_cfg, f"hat predict {stage_cfg.task} --stage {stage}")
    runner = _build(stage_cfg, key, host)
    if not hasattr(runner, "run"):
        raise ConfigError(
            f"{key} built a {type(runner).__name__}, which cannot predict", where=stage_cfg.config.locate(key)
        )
    return runner.run(ctx)
