"""What a plugin's tests need from core: a plugin host, the CLI in process, one conformance check.

Every task plugin's tests start the same way (a host holding core and that plugin alone,
so that other installed plugins cannot leak in), drive the CLI in process, and check the
same contract: its configs resolve, its deploy model builds and runs at its deploy inputs,
every type it marks is registered, and its tiny demo runs. Each copy of those helpers in
a plugin's tests would drift from the others; this module is the one copy. It needs
pytest only for :func:`host_fixture`.

    # conftest.py of a plugin's tests
    from hat.testing import host_fixture
    mytask_host = host_fixture("hat_mytask.plugin", "hat-mytask")

    # a test
    def test_conforms(mytask_host):
        check_plugin("hat_mytask.plugin", "hat-mytask", host=mytask_host)
"""

from __future__ import annotations

import contextlib
import importlib
import io
import pkgutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hat.plugins import PluginHost, set_host
from hat.registry import marked_name


@contextlib.contextmanager
def use_host(*plugins: tuple[object, str], entry_points: bool = False) -> Iterator[PluginHost]:
    """A host with core and ``plugins`` ((module or object, distribution) pairs), installed
    as the process-wide one for the block and restored after it."""
    host = PluginHost(entry_points=entry_points, extra=list(plugins))
    previous = set_host(host)
    try:
        yield host
    finally:
        set_host(previous)


def host_fixture(plugin_module: str | None, distribution: str = "", *, scope: str = "function") -> Callable[..., Any]:
    """A pytest fixture yielding a host with core and one plugin (by module name) installed.

    ``plugin_module=None`` gives core alone.
    """
    import pytest

    def fixture() -> Iterator[PluginHost]:
        plugins = [(importlib.import_module(plugin_module), distribution)] if plugin_module else []
        with use_host(*plugins) as host:
            yield host

    return pytest.fixture(scope=scope)(fixture)


@dataclass(frozen=True)
class CliResult:
    """What one in-process ``hat`` command did: its exit code and what it printed."""

    code: int
    out: str
    err: str

    def __iter__(self) -> Iterator[int | str]:
        """``code, out, err = run_cli(...)``."""
        return iter((self.code, self.out, self.err))


def run_cli(*args: str, quiet: bool = True) -> CliResult:
    """Run ``hat ARGS`` in this process (with the process-wide host) and capture its output.

    Exit codes are the executable's: 0 done, 1 failed work, 2 bad input.
    """
    from hat.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [*args, "--quiet"] if quiet else list(args)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return CliResult(code, out.getvalue(), err.getvalue())


@dataclass
class Conformance:
    """What :func:`check_plugin` checked; ``problems`` is empty when the plugin conforms."""

    configs: list[str] = field(default_factory=list)
    deploy_models: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    registered: list[str] = field(default_factory=list)
    demo_report: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)


class PluginDoesNotConform(AssertionError):
    """Raised by :func:`check_plugin` with every problem found, not just the first."""


def check_plugin(
    plugin_module: str,
    distribution: str,
    *,
    host: PluginHost,
    demo_overrides: Sequence[str] | None = None,
    demo_synth_options: dict[str, Any] | None = None,
    demo_work_dir: Path | None = None,
    skip_configs: Iterable[str] = (),
) -> Conformance:
    """Check the plugin contract (``docs/plugins.md``) for one plugin; raise listing every problem.

    - every config the plugin ships loads, and its ``deploy_model`` builds and runs on
      zero inputs of its ``deploy_inputs`` shapes, returning a dict of tensors;
    - every object its package marks with ``register_type`` is registered, owned by
      ``distribution``;
    - each of its tasks names a default config it ships;
    - with ``demo_overrides`` (``--set`` values for a short run), each task's demo runs
      end to end and reports every stage's metrics.
    """
    import torch

    from hat.engine.deploy_model import build_deploy_model
    from hat.errors import UserError
    from hat.usecases.demo import run_demo
    from hat.usecases.stages import load_stage_config

    result = Conformance()
    package = plugin_module.rsplit(".", 1)[0]
    mine = {name for name, owner in host.configs.owners.items() if owner == distribution}
    tasks = [spec for name, spec in host.tasks.items.items() if host.tasks.owners[name] == distribution]
    if not tasks:
        result.problems.append(f"{distribution} declares no task (hat_tasks)")
    for spec in tasks:
        if spec.default_config not in mine:
            result.problems.append(f"task {spec.name!r}: default config {spec.default_config!r} is not shipped")
    task_name = tasks[0].name if tasks else ""
    for name in sorted(mine - set(skip_configs)):
        result.configs.append(name)
        with tempfile.TemporaryDirectory() as work:
            try:
                stage_cfg = load_stage_config(task_name, config_ref=name, work_dir=Path(work), host=host)
                cfg = stage_cfg.config
                cfg["deploy_model"]  # noqa: B018 -- a config without one is a problem (KeyError below)
                model, inputs = build_deploy_model(cfg, host.registry)  # the graph the config stands for
                with torch.no_grad():
                    outputs = model(inputs)
            except (UserError, KeyError, RuntimeError, TypeError, ValueError) as exc:
                result.problems.append(f"config {name!r}: {type(exc).__name__}: {exc}")
                continue
        if not isinstance(outputs, dict) or not all(isinstance(v, torch.Tensor) for v in outputs.values()):
            result.problems.append(f"config {name!r}: the deploy model must return a dict of tensors")
            continue
        result.deploy_models[name] = {k: tuple(v.shape) for k, v in outputs.items()}
    owners = {entry.name: entry.owner for entry in host.registry.entries()}
    for marked in _marked_objects(package):
        if owners.get(marked) != distribution:
            result.problems.append(f"type {marked!r} is marked in {package} but not registered by {distribution}")
        else:
            result.registered.append(marked)
    if demo_overrides is not None and not result.problems:
        for spec in tasks:
            if spec.demo is None:
                continue
            work = demo_work_dir or Path(tempfile.mkdtemp(prefix=f"hat-{spec.name}-demo-"))
            report = run_demo(spec.name, work, overrides=demo_overrides, synth_options=demo_synth_options, host=host)
            result.demo_report = report
            missing = [s for s in (*spec.demo.stages, "int_infer") if s not in report["stages"]]
            if missing:
                result.problems.append(f"demo {spec.name!r} reported no metrics for {', '.join(missing)}")
    if result.problems:
        raise PluginDoesNotConform(f"{distribution} does not conform:\n  " + "\n  ".join(result.problems))
    return result


def fixed_point(
    model: Any, calibration_inputs: Iterable[Any], example: Any, qconfig_params: dict[str, Any] | None = None
) -> tuple[Any, Any, Any]:
    """A float model as the int8 pipeline makes it, for a block's own tests.

    Converts a copy (with ``qconfig_params``, e.g. ``{"activation_symmetry": "asymmetric"}``;
    none: the default QConfig), calibrates it on ``calibration_inputs``, runs
    ``example`` once (which records each conv's input grid for its bias), freezes it to
    fixed point and runs ``example`` again. Returns ``(qmodel, report, simulated)``: the
    frozen model, the conversion report (what was left float) and its output on
    ``example``, ready for ``hat.deploy.onnx_export.export_onnx(qmodel, example, path)``.
    """
    import copy

    import torch

    from hat.quant.modes import calibration_mode
    from hat.quant.prepare import convert, freeze
    from hat.quant.qconfig import QConfig

    model.eval()
    qmodel, report = convert(copy.deepcopy(model), QConfig.from_params(qconfig_params))
    qmodel.eval()
    with torch.no_grad(), calibration_mode(qmodel):
        for inputs in calibration_inputs:
            qmodel(inputs)
    with torch.no_grad():
        qmodel(example)
        freeze(qmodel)
        simulated = qmodel(example)
    return qmodel, report, simulated


def _marked_objects(package: str) -> list[str]:
    root = importlib.import_module(package)
    names: list[str] = []
    modules = [root] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}.")
    ]
    for module in modules:
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) == module.__name__ and (name := marked_name(obj)):
                names.append(name)
    return sorted(set(names))
