"""Type names to classes, and ``{"type": ..., ...}`` config dicts to objects.

Configs name what they want by string (``type: AdamW``, ``type: Resize``); the registry
maps those names to the callables that plugins (and core) registered through the
``hat_register`` hook. Every registration remembers its owner so that two plugins
claiming one name fail with a message naming both, and every build error names the key
path (and the file and line, when the config knows them) where the bad dict appeared.

Classes opt in with the :func:`register_type` decorator, which only marks them; nothing
is registered at import time, so importing a module never changes global state.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from hat.errors import ConfigError, PluginError

T = TypeVar("T")

#: Attribute set by :func:`register_type` on a class or function.
TYPE_NAME_ATTR = "__hat_type__"
#: Optional class attribute: argument names whose config dicts are passed unbuilt,
#: because the object builds them later with more arguments (an optimizer needs the
#: model's parameters, a data loader's sampler needs the dataset).
LAZY_ARGS_ATTR = "__hat_lazy_args__"


def register_type(name: str | None = None, *, lazy_args: tuple[str, ...] = ()) -> Callable[[T], T]:
    """Mark a class or factory as registrable under ``name`` (default: its own name)."""

    def mark(obj: T) -> T:
        setattr(obj, TYPE_NAME_ATTR, name or obj.__name__)
        if lazy_args:
            setattr(obj, LAZY_ARGS_ATTR, tuple(lazy_args))
        return obj

    return mark


def marked_name(obj: Any) -> str | None:
    """The name :func:`register_type` gave ``obj`` itself (a subclass does not inherit it)."""
    return vars(obj).get(TYPE_NAME_ATTR) if hasattr(obj, "__dict__") else None


@dataclass(frozen=True)
class Entry:
    name: str
    obj: Callable[..., Any]
    owner: str


class Registry:
    """Type name -> callable, with owners, building and helpful errors."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}

    # -- registration -----------------------------------------------------------------
    def add(self, obj: Callable[..., Any], name: str | None = None, *, owner: str = "hat-core") -> None:
        """Register ``obj`` under ``name`` (its marked name, else ``__name__``)."""
        name = name or marked_name(obj) or obj.__name__
        existing = self._entries.get(name)
        if existing is not None:
            if existing.obj is obj:
                return
            raise PluginError(
                f"type name {name!r} is registered twice: by {existing.owner} and by {owner}",
                hint="uninstall one of the two distributions, or restrict loading with HAT_PLUGINS=name,name",
            )
        self._entries[name] = Entry(name, obj, owner)

    def add_marked(self, namespace: Any, *, owner: str = "hat-core") -> int:
        """Register every object in a module (or iterable) marked by :func:`register_type`.

        Returns how many were registered, so a caller can assert it found its types.
        """
        if isinstance(namespace, (list, tuple)):
            objects = list(namespace)
        else:  # a module: only what it defines, not what it imports
            objects = [o for o in vars(namespace).values() if getattr(o, "__module__", None) == namespace.__name__]
        count = 0
        for obj in objects:
            if marked_name(obj):
                self.add(obj, owner=owner)
                count += 1
        return count

    def add_package(self, package: str, *, owner: str = "hat-core", skip: Iterable[str] = ()) -> int:
        """Register every marked object in ``package`` and all of its submodules.

        A plugin's types live in many modules; listing them by hand in ``plugin.py``
        was a list to keep in step with the tree (a new module was silently not
        registered). Walking the package imports each module once (``skip`` names
        submodules, relative to ``package``, that must not be imported, e.g. one that
        needs an optional dependency). A submodule that fails to import is an error
        naming it, not a silently missing type. Returns how many were registered.
        """
        skipped = {f"{package}.{name}" for name in skip}
        try:
            root = importlib.import_module(package)
        except Exception as exc:
            raise PluginError(f"cannot import {package!r} to register its types: {type(exc).__name__}: {exc}") from exc
        modules = [root]
        for info in pkgutil.walk_packages(getattr(root, "__path__", []), prefix=f"{package}."):
            if info.name in skipped or any(info.name.startswith(f"{s}.") for s in skipped):
                continue
            try:
                modules.append(importlib.import_module(info.name))
            except Exception as exc:  # a broken module must say which one it is
                raise PluginError(
                    f"cannot import {info.name!r} to register its types: {type(exc).__name__}: {exc}",
                    hint=f"fix the module, or pass skip=[{info.name[len(package) + 1 :]!r}] to add_package",
                ) from exc
        return sum(self.add_marked(module, owner=owner) for module in modules)

    def scoped(self, owner: str) -> ScopedRegistry:
        """A view that registers everything under ``owner`` (what a plugin's hook gets)."""
        return ScopedRegistry(self, owner)

    # -- lookup -----------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def get(self, name: str, *, path: str = "", where: str | None = None) -> Callable[..., Any]:
        entry = self._entries.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, self._entries, n=5, cutoff=0.5)
            hint = f"did you mean {', '.join(close)}?" if close else "run `hat list` to see the registered types"
            raise ConfigError(
                f"unknown type {name!r} at {path or '<root>'}",
                where=where,
                hint=hint,
            )
        return entry.obj

    # -- building ---------------------------------------------------------------------
    def build(
        self,
        cfg: Any,
        *,
        path: str = "",
        locate: Callable[[str], str | None] | None = None,
        **extra: Any,
    ) -> Any:
        """Build ``cfg`` recursively: every dict with a ``type`` key becomes an object.

        Dicts without ``type`` and lists are walked and rebuilt; other values pass
        through. ``extra`` keyword arguments go to the top-level call only (for
        arguments that only exist at run time, such as an optimizer's parameters).
        ``locate(path)`` may return "file:line" for a key path, for error messages.
        """
        return _Builder(self, locate).build(cfg, path, extra)


class ScopedRegistry:
    """A registry view bound to one owner, handed to a plugin's ``hat_register``."""

    def __init__(self, registry: Registry, owner: str) -> None:
        self._registry = registry
        self.owner = owner

    def add(self, obj: Callable[..., Any], name: str | None = None) -> None:
        self._registry.add(obj, name, owner=self.owner)

    def add_marked(self, namespace: Any) -> int:
        return self._registry.add_marked(namespace, owner=self.owner)

    def add_package(self, package: str, *, skip: Iterable[str] = ()) -> int:
        return self._registry.add_package(package, owner=self.owner, skip=skip)

    def __contains__(self, name: object) -> bool:
        return name in self._registry


class _Builder:
    def __init__(self, registry: Registry, locate: Callable[[str], str | None] | None) -> None:
        self.registry = registry
        self.locate = locate or (lambda _path: None)

    def build(self, cfg: Any, path: str, extra: Mapping[str, Any] | None = None) -> Any:
        if isinstance(cfg, Mapping):
            if "type" in cfg:
                return self._build_typed(cfg, path, extra or {})
            return {k: self.build(v, _join(path, k)) for k, v in cfg.items()}
        if isinstance(cfg, list):
            return [self.build(v, _join(path, str(i))) for i, v in enumerate(cfg)]
        return cfg

    def _build_typed(self, cfg: Mapping[str, Any], path: str, extra: Mapping[str, Any]) -> Any:
        type_name = cfg["type"]
        type_path = _join(path, "type")
        if callable(type_name) and not isinstance(type_name, str):
            target = type_name
        elif isinstance(type_name, str):
            target = self.registry.get(type_name, path=type_path, where=self.locate(type_path))
        else:
            raise ConfigError(
                f"'type' must be a registered type name, got {type_name!r} at {type_path}",
                where=self.locate(type_path),
            )
        lazy = set(getattr(target, LAZY_ARGS_ATTR, ()))
        kwargs: dict[str, Any] = {}
        for key, value in cfg.items():
            if key == "type":
                continue
            key_path = _join(path, key)
            kwargs[key] = value if key in lazy else self.build(value, key_path)
        kwargs.update(extra)
        self._check_arguments(target, type_name, kwargs, path)
        try:
            return target(**kwargs)
        except (ValueError, TypeError) as exc:  # a constructor rejecting its arguments is a config error
            raise ConfigError(
                f"cannot build {type_name!r} at {path or '<root>'}: {exc}",
                where=self.locate(_blamed_key(exc, kwargs, path)),
                hint="correct the value where it is set (`hat config show` prints the resolved config)",
            ) from exc

    def _check_arguments(self, target: Callable[..., Any], type_name: Any, kwargs: dict[str, Any], path: str) -> None:
        """Name an unknown or missing key, or a value of the wrong type, before calling,
        instead of a bare TypeError (or a "'<' not supported" from deep inside)."""
        try:
            sig = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have no signature
            return
        check_argument_types(target, kwargs, path, self.locate)
        params = sig.parameters
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
        if not accepts_any:
            for key in kwargs:
                if key not in accepted:
                    close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
                    hint = (
                        f"did you mean {', '.join(close)}?" if close else f"{type_name} accepts: {', '.join(accepted)}"
                    )
                    raise ConfigError(
                        f"unknown key {key!r} for type {type_name!r} at {_join(path, key)}",
                        where=self.locate(_join(path, key)) or self.locate(_join(path, "type")),
                        hint=hint,
                    )
        missing = [
            n
            for n, p in params.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.default is p.empty
            and n not in kwargs
            and n != "self"
        ]
        if missing:
            raise ConfigError(
                f"type {type_name!r} at {path or '<root>'} is missing required key(s): {', '.join(missing)}",
                where=self.locate(_join(path, "type")),
            )


#: Annotations a config value can be checked against (YAML gives these types).
_SCALARS = (bool, int, float, str)


def _accepts(annotation: Any, value: Any) -> bool | None:
    """Whether ``value`` fits ``annotation``; None when the annotation is not one to check."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return None
    members = (
        typing.get_args(annotation)
        if typing.get_origin(annotation) in (typing.Union, types.UnionType)
        else (annotation,)
    )
    if not all(m is type(None) or isinstance(m, type) for m in members):
        return None  # Sequence[int], callables, ...: too rich to check here
    for member in members:
        if member is type(None):
            if value is None:
                return True
        elif member is float and isinstance(value, int) and not isinstance(value, bool):
            return True
        elif member is int and isinstance(value, bool):
            continue
        elif isinstance(value, member):
            return True
        elif member not in _SCALARS and not isinstance(value, _SCALARS):
            return None  # a built object or a dict meant for a richer type: not ours to judge
    return False


def check_argument_types(
    target: Callable[..., Any], kwargs: Mapping[str, Any], path: str, locate: Callable[[str], str | None]
) -> None:
    """A scalar config value of the wrong type (``num_epochs: abc``, ``lr: fast``) is a
    :class:`ConfigError` naming the key path and where it was set (a file line or the
    ``--set``), not an error from deep inside the object that received it.

    Only plain annotations are checked (``int``, ``float | None``, a class): a value of
    YAML's scalar types against them.
    """
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable annotations: nothing to check against
        return
    for key, value in kwargs.items():
        if key not in hints or not isinstance(value, (*_SCALARS, type(None))):
            continue
        if _accepts(hints[key], value) is False:
            wanted = getattr(hints[key], "__name__", None) or str(hints[key]).replace("typing.", "")
            raise ConfigError(
                f"{_join(path, key)} must be {wanted}, got {value!r} ({type(value).__name__})",
                where=locate(_join(path, key)),
                hint="correct the value where it is set (`hat config show` prints the resolved config)",
            )


def _blamed_key(exc: BaseException, kwargs: Mapping[str, Any], path: str) -> str:
    """The key path a constructor's error names (``batch_size should be positive``), else its type."""
    text = str(exc)
    named = [key for key in kwargs if key in text]
    return _join(path, max(named, key=len)) if named else _join(path, "type")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)
