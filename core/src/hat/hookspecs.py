"""What a plugin implements and hands to HAT: the hook markers, the hook specs, and the
task description types. This is the one module a plugin's ``plugin.py`` imports from core
(with the helpers of :mod:`hat.plugin_kit`); the host that loads plugins
(:mod:`hat.plugins`) is apart from it, so a plugin never depends on how it is loaded.

    from hat.hookspecs import DemoRecipe, TaskSpec, hookimpl

Every hook is optional. ``docs/plugins.md`` has a section per hook and a worked example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

PROJECT = "hat"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class DemoRecipe:
    """How a task's demo runs.

    ``config``: the tiny config's name. ``dataset``: the synth/packer dataset.
    ``synth_options`` / ``pack_options``: their keyword options. ``splits``: the splits to
    pack. ``data_root_key``: the config's top-level key for the packed data directory.
    ``overrides``: extra ``--set`` values for a short run. ``metrics``: the metric names
    shown per stage. ``infer_inputs(raw_dir)``: a few raw files to run `hat infer` on;
    ``infer_options(raw_dir)``: the keyword options that `hat infer` needs with them (e.g.
    ``{"calib": path}``). ``raw_root_key``: a config key set to the raw dataset directory,
    for metrics that evaluate against the raw dataset itself (the nuScenes devkit).
    ``expected_seconds``: about how long the demo takes on a 2-core CPU; `hat demo` with
    no task runs the quickest installed one (a demo without it counts as the slowest).
    """

    config: str
    dataset: str
    metrics: Sequence[str]
    splits: Sequence[str] = ("train", "test")
    synth_options: dict[str, Any] = field(default_factory=dict)
    pack_options: dict[str, Any] = field(default_factory=dict)
    data_root_key: str = "data_root"
    overrides: Sequence[str] = ()
    stages: Sequence[str] = ("float", "calibration", "qat")
    infer_inputs: Callable[[Path], list[Path]] | None = None
    infer_options: Callable[[Path], dict[str, Any]] | None = None
    raw_root_key: str | None = None
    expected_seconds: float | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a task is, for `hat list`, `hat train TASK` and `hat demo TASK`.

    ``default_config`` is a config name from the plugin's ``hat_configs``;
    ``dataset`` names the packer/synth dataset the task trains on; ``demo`` is the
    task's :class:`DemoRecipe` (the tiny config, dataset and options that
    `hat demo TASK` runs the whole chain with), ``None`` if it has none.
    """

    name: str
    summary: str
    default_config: str
    dataset: str
    demo: DemoRecipe | None = None


class HatSpec:
    """Hook specifications. Every hook is optional for a plugin."""

    @hookspec
    def hat_register(self, registry: Any) -> None:
        """Register types (models, heads, losses, transforms, datasets, metrics, ...).

        ``registry`` is bound to the calling plugin: ``registry.add(cls)`` registers
        ``cls`` under its :func:`hat.registry.register_type` name (or ``__name__``),
        ``registry.add(obj, "Name")`` under an explicit name, and
        ``registry.add_marked(module)`` everything a module marks. Return nothing.
        """

    @hookspec
    def hat_tasks(self) -> Iterable[TaskSpec]:
        """Return the plugin's tasks as :class:`TaskSpec` objects (names unique)."""

    @hookspec
    def hat_configs(self) -> Mapping[str, Path]:
        """Return config name -> path of a YAML file the plugin ships.

        Names are used as ``--config NAME`` and in ``_base_``; they are conventionally
        the file name without ``.yaml`` and must be unique across plugins.
        """

    @hookspec
    def hat_packers(self) -> Mapping[str, type]:
        """Return dataset name -> packer class (a :class:`hat.data.packer.Packer`).

        `hat pack DATASET` instantiates it with ``src``, ``split`` and the dataset's own
        options, and the pack driver writes what it yields to LMDB.
        """

    @hookspec
    def hat_synth(self) -> Mapping[str, Callable[..., Any]]:
        """Return dataset name -> synthetic-data generator.

        The generator is called as ``generate(dst: Path, *, seed: int, **options)`` and
        writes the dataset's real raw layout under ``dst``. Keyword-only parameters
        with defaults are its options, exposed on the command line as ``--name``.
        """

    @hookspec
    def hat_quant_backends(self) -> Mapping[str, Callable[..., Any]]:
        """Return quantization backend name -> factory (see ``hat.quant``)."""

    @hookspec
    def hat_compile_backends(self) -> Mapping[str, Callable[..., Any]]:
        """Return compilation backend name -> factory (see ``hat.deploy``)."""
