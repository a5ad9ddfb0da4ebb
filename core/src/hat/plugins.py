"""The plugin system: pluggy hookspecs and the host that loads plugins once.

HAT's core knows no task. Everything a task brings (its models and transforms, its
task spec, configs, packer, synthetic-data generator) arrives through the hooks
below, from distributions that declare an entry point in the ``hat`` group::

    [project.entry-points.hat]
    keypoint = "hat_keypoint.plugin"

Core registers its own built-ins through the same hooks (``hat.builtins``), so there
is one path for everything. Plugins load lazily, on the first command that needs
them, and once per process. ``HAT_PLUGINS=a,b`` restricts which installed plugins
load (by entry-point or distribution name); ``HAT_PLUGINS=`` (empty) loads none.
Two plugins claiming the same task, dataset, config or type name is an error naming
both distributions.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from hat.errors import PluginError
from hat.hookspecs import PROJECT, HatSpec, TaskSpec
from hat.registry import Registry

ENTRY_POINT_GROUP = "hat"
ENV_RESTRICT = "HAT_PLUGINS"
CORE_DIST = "hat-core"


@dataclass(frozen=True)
class PluginInfo:
    """One loaded plugin: its entry-point name, distribution and version."""

    name: str
    distribution: str
    version: str
    module: str


@dataclass
class _Claimed:
    """Named things collected from one hook, with the distribution that claimed each."""

    kind: str
    items: dict[str, Any] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)

    def claim(self, name: str, value: Any, owner: str) -> None:
        if name in self.items:
            raise PluginError(
                f"{self.kind} {name!r} is claimed twice: by {self.owners[name]} and by {owner}",
                hint="uninstall one of the two distributions, or restrict loading with HAT_PLUGINS=name,name",
            )
        self.items[name] = value
        self.owners[name] = owner


class PluginHost:
    """Loaded plugins and everything they contributed, collected once.

    ``entry_points=False`` loads only core and the ``extra`` plugin objects, which is
    how tests register a plugin in-process without installed plugins leaking in.
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        extra: Iterable[tuple[object, str]] = (),
        restrict: str | None = None,
    ) -> None:
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(HatSpec)
        self._owner: dict[str, str] = {}  # plugin name -> distribution
        self.plugins: list[PluginInfo] = []

        from hat import builtins

        self._add(builtins, "core", CORE_DIST, _version(CORE_DIST), builtins.__name__)
        if entry_points:
            self._load_entry_points(os.environ.get(ENV_RESTRICT) if restrict is None else restrict)
        for obj, dist in extra:
            name = getattr(obj, "__name__", repr(obj))
            self._add(obj, name, dist, "test", name)
        self._check_hook_names()
        self._collect()

    # -- loading ----------------------------------------------------------------------
    def _add(self, obj: object, name: str, dist: str, version: str, module: str) -> None:
        self._pm.register(obj, name=name)
        self._owner[name] = dist
        self.plugins.append(PluginInfo(name, dist, version, module))

    def _load_entry_points(self, restrict: str | None) -> None:
        eps = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
        wanted: set[str] | None = None
        if restrict is not None:
            wanted = {w.strip() for w in restrict.split(",") if w.strip()}
            known = {ep.name for ep in eps} | {ep.dist.name for ep in eps if ep.dist}
            unknown = sorted(wanted - known)
            if unknown:
                raise PluginError(
                    f"{ENV_RESTRICT} names plugin(s) that are not installed: {', '.join(unknown)}",
                    where=f"{ENV_RESTRICT}={restrict}",
                    hint=f"installed: {', '.join(sorted(known)) or 'none'}",
                )
        for ep in sorted(eps, key=lambda e: e.name):
            dist = ep.dist.name if ep.dist else "?"
            if wanted is not None and ep.name not in wanted and dist not in wanted:
                continue
            if ep.name in self._owner:
                raise PluginError(
                    f"plugin name {ep.name!r} is claimed twice: by {self._owner[ep.name]} and by {dist}",
                    hint="uninstall one of the two distributions",
                )
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                raise PluginError(
                    f"plugin {ep.name!r} from {dist} failed to import: {type(exc).__name__}: {exc}",
                    where=ep.value,
                    hint=f"reinstall or uninstall {dist}, or skip it with {ENV_RESTRICT}",
                ) from exc
            self._add(module, ep.name, dist, ep.dist.version if ep.dist else "?", ep.value)

    def _check_hook_names(self) -> None:
        """A ``@hookimpl`` whose name is no hook (``hat_config`` for ``hat_configs``) is an error.

        pluggy would register it and never call it: the plugin would load and silently
        contribute nothing. ``check_pending`` finds such implementations; the error names
        the distribution, the misspelt hook and the closest real ones.
        """
        known = [name for name in dir(HatSpec) if name.startswith(f"{PROJECT}_")]
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as exc:
            plugin_name = self._pm.get_name(exc.plugin) or "?"
            hook = next(
                (
                    name
                    for name, caller in vars(self._pm.hook).items()
                    if isinstance(caller, pluggy.HookCaller)
                    and not caller.has_spec()
                    and any(impl.plugin is exc.plugin for impl in caller.get_hookimpls())
                ),
                "?",
            )
            close = difflib.get_close_matches(hook, known, n=2, cutoff=0.5)
            raise PluginError(
                f"plugin {plugin_name!r} from {self._owner.get(plugin_name, '?')} implements {hook!r}, "
                "which is not a HAT hook: it would never be called",
                hint=(f"did you mean {', '.join(close)}? " if close else "") + f"the hooks are: {', '.join(known)}",
            ) from None

    def _collect(self) -> None:
        self.registry = Registry()
        self.tasks = _Claimed("task")
        self.configs = _Claimed("config")
        self.packers = _Claimed("dataset packer")
        self.synth = _Claimed("dataset generator")
        self.quant_backends = _Claimed("quantization backend")
        self.compile_backends = _Claimed("compilation backend")
        # Call each plugin's implementation separately (not pluggy's aggregated call)
        # so that every contribution is attributed to the distribution it came from.
        for impl in self._impls("hat_register"):
            impl.function(registry=self.registry.scoped(self._owner[impl.plugin_name]))
        for impl in self._impls("hat_tasks"):
            for spec in impl.function() or ():
                self.tasks.claim(spec.name, spec, self._owner[impl.plugin_name])
        for hook, claimed in (
            ("hat_configs", self.configs),
            ("hat_packers", self.packers),
            ("hat_synth", self.synth),
            ("hat_quant_backends", self.quant_backends),
            ("hat_compile_backends", self.compile_backends),
        ):
            for impl in self._impls(hook):
                for name, value in (impl.function() or {}).items():
                    claimed.claim(name, value, self._owner[impl.plugin_name])

    def _impls(self, hook: str) -> list[Any]:
        # pluggy returns implementations in reverse registration order; core first reads better.
        return list(reversed(getattr(self._pm.hook, hook).get_hookimpls()))

    # -- lookup with helpful errors -----------------------------------------------------
    def task(self, name: str) -> TaskSpec:
        return self._lookup(self.tasks, name, "task", "install the task's plugin, e.g. `pip install hat-keypoint`")

    def packer(self, dataset: str) -> type:
        return self._lookup(self.packers, dataset, "dataset", "run `hat list` to see the datasets that can be packed")

    def synth_generator(self, dataset: str) -> Callable[..., Any]:
        return self._lookup(
            self.synth, dataset, "dataset", "run `hat list` to see the datasets that can be synthesized"
        )

    def _lookup(self, claimed: _Claimed, name: str, what: str, fallback_hint: str) -> Any:
        if name in claimed.items:
            return claimed.items[name]
        close = difflib.get_close_matches(name, claimed.items, n=3, cutoff=0.5)
        known = sorted(claimed.items)
        if close:
            hint = f"did you mean {', '.join(close)}?"
        elif known:
            hint = f"known: {', '.join(known)}"
        else:
            hint = fallback_hint
        raise PluginError(f"unknown {what} {name!r}", hint=hint)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, created on first use (plugins load lazily, once)."""
    global _HOST
    if _HOST is None:
        _HOST = PluginHost()
    return _HOST


def set_host(host: PluginHost | None) -> PluginHost | None:
    """Install ``host`` as the process-wide one (tests); returns the previous one."""
    global _HOST
    previous, _HOST = _HOST, host
    return previous
