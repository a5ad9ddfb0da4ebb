"""YAML configs: safe loading, ``_base_`` inheritance, ``${name}`` interpolation, overrides.

A config is plain data (dicts, lists, scalars); the registry turns its ``type:`` dicts
into objects later. Resolution order, each step on the result of the previous one:

1. the file is parsed with ``yaml.safe_load`` (a config never runs code);
2. each ``_base_`` (a config name or a path relative to the file; a string or a list,
   later bases win) is loaded the same way and the file is deep-merged over them:
   maps merge key by key, anything else (lists included) is replaced whole;
3. ``--set a.b.c=value`` overrides apply, values parsed as YAML scalars;
4. ``${name}`` is replaced by the top-level value ``name`` (the whole value, type kept,
   when the string is exactly ``${name}``; its text when embedded in a longer string).

Every key path remembers the file and line that last set it, so errors can point there.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hat.errors import ConfigError

BASE_KEY = "_base_"


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``).

    Learning rates are written ``1e-4`` in every recipe; a string there would fail far
    from the config. Only the float rule changes; no tag can construct an object.
    """


_Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass
class Config:
    """A resolved config: its data, where it came from, and where each key was set."""

    data: dict[str, Any]
    name: str
    path: Path | None = None
    locations: dict[str, str] = field(default_factory=dict)
    #: The merged config with overrides applied, before ``${...}`` interpolation and
    #: without ``defaults``: what a work dir stores, so that a later ``--set`` still
    #: reaches every place a value is referred to.
    raw: dict[str, Any] = field(default_factory=dict)

    def locate(self, key_path: str) -> str | None:
        """``file:line`` that set ``key_path`` (or its nearest parent that is known)."""
        parts = key_path.split(".") if key_path else []
        while parts:
            loc = self.locations.get(".".join(parts))
            if loc:
                return loc
            parts.pop()
        return str(self.path) if self.path else None

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.data, sort_keys=False, default_flow_style=None, width=100)


def load_config(
    path: str | Path,
    *,
    overrides: Iterable[str] = (),
    named: Mapping[str, Path] | None = None,
    name: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Config:
    """Load ``path`` with its bases, apply ``overrides``, interpolate; see module doc.

    ``named`` maps config names to files, for ``_base_: some_config_name``.
    ``defaults`` are top-level values the config may refer to without defining them
    (the CLI provides ``work_dir`` and ``task`` this way); the config's own win.
    """
    path = Path(path)
    data, locations = _load_with_bases(path, named or {}, chain=())
    defaulted = [key for key in (defaults or {}) if key not in data]
    for key, value in (defaults or {}).items():
        data.setdefault(key, value)
    for item in overrides:
        _apply_override(data, locations, item)
    raw = copy.deepcopy(data)
    for key in defaulted:
        if raw.get(key) == (defaults or {})[key]:
            del raw[key]
    data = _interpolate(data, locations)
    return Config(data=data, name=name or path.stem, path=path, locations=locations, raw=raw)


# -- parsing ------------------------------------------------------------------------------


def _parse_file(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", hint="check the path or the config name") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError(
            f"config file is {len(text)} characters, more than a config can be ({MAX_CONFIG_CHARS})",
            where=str(path),
            hint="check that this is the config you meant (a config is a few hundred lines of YAML)",
        )
    try:
        node = yaml.compose(text, Loader=_Loader)
        if node is not None:
            _check_node(node, path)
        data = _load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"invalid YAML: {problem}", where=where) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"a config must be a YAML mapping at top level, got {type(data).__name__}",
            where=f"{path}:1",
        )
    locations: dict[str, str] = {}
    if node is not None:
        _record_locations(node, "", path, locations)
    return data, locations


#: Bounds on what one config file may be. A config is a few hundred values; YAML
#: aliases can make a 1 KB file expand to billions (an "alias bomb"), which every walk
#: over the data (locations, merging, interpolation) would then expand.
MAX_CONFIG_CHARS = 1_000_000
MAX_EXPANDED_VALUES = 100_000


def _check_node(root: yaml.Node, path: Path) -> None:
    """Refuse a duplicate key (YAML keeps the last one silently) and an alias bomb.

    The expanded size is counted on the node graph, where an alias is the same node
    object: memoized per node, so the count itself never expands anything.
    """
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias counts once instead of looping
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    if key_node.value in seen:
                        first = seen[key_node.value]
                        raise ConfigError(
                            f"duplicate key {key_node.value!r} (first at line {first.start_mark.line + 1}): "
                            "YAML would keep only the last one",
                            where=f"{path}:{key_node.start_mark.line + 1}",
                            hint="remove one of the two",
                        )
                    seen[key_node.value] = key_node
                total += size(key_node) + size(value_node)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        if total > MAX_EXPANDED_VALUES:
            raise ConfigError(
                f"config expands to more than {MAX_EXPANDED_VALUES} values (nested YAML aliases?)",
                where=f"{path}:{node.start_mark.line + 1}",
                hint="a config is a few hundred values: write them out instead of nesting aliases",
            )
        sizes[id(node)] = total
        return total

    size(root)


def _record_locations(node: yaml.Node, prefix: str, path: Path, out: dict[str, str]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
            out[key] = f"{path}:{key_node.start_mark.line + 1}"
            _record_locations(value_node, key, path, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            key = f"{prefix}.{i}" if prefix else str(i)
            out[key] = f"{path}:{item.start_mark.line + 1}"
            _record_locations(item, key, path, out)


def _load_with_bases(
    path: Path, named: Mapping[str, Path], chain: tuple[Path, ...]
) -> tuple[dict[str, Any], dict[str, str]]:
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"_base_ inheritance loops: {cycle}", where=str(path))
    data, locations = _parse_file(path)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data, locations
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError("_base_ must be a config name, a path, or a list of them", where=locations.get(BASE_KEY))
    merged: dict[str, Any] = {}
    merged_locations: dict[str, str] = {}
    for i, base in enumerate(bases):
        where = locations.get(f"{BASE_KEY}.{i}") or locations.get(BASE_KEY)
        base_path = _resolve_base(base, path, named, where)
        base_data, base_locations = _load_with_bases(base_path, named, (*chain, resolved))
        merged = deep_merge(merged, base_data)
        merged_locations.update(base_locations)
    merged = deep_merge(merged, data)
    merged_locations.update({k: v for k, v in locations.items() if not k.startswith(BASE_KEY)})
    return merged, merged_locations


def _resolve_base(base: str, including: Path, named: Mapping[str, Path], where: str | None) -> Path:
    candidate = including.parent / base
    if candidate.is_file():
        return candidate
    key = base[:-5] if base.endswith(".yaml") else base
    if key in named:
        return Path(named[key])
    close = difflib.get_close_matches(key, named, n=3, cutoff=0.5)
    raise ConfigError(
        f"_base_ {base!r} is neither a file next to {including.name} nor a known config name",
        where=where,
        hint=f"did you mean {', '.join(close)}?" if close else "run `hat list` to see the config names",
    )


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Maps merge key by key, recursively; any other value in ``override`` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- overrides ----------------------------------------------------------------------------


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value parsed as a YAML scalar)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"bad --set {item!r}: expected KEY.PATH=VALUE, e.g. float_trainer.num_epochs=1")
    try:
        value = _load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"bad --set {item!r}: the value is not valid YAML ({exc})") from None
    return key.split("."), value


def _apply_override(data: dict[str, Any], locations: dict[str, str], item: str) -> None:
    parts, value = parse_override(item)
    node: Any = data
    walked: list[str] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        walked.append(part)
        node = _materialize_reference(data, node, walked[:-1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                raise ConfigError(f"bad --set {item!r}: {'.'.join(walked)} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            elif part not in node:
                close = difflib.get_close_matches(part, [str(k) for k in node], n=3, cutoff=0.5)
                raise ConfigError(
                    f"bad --set {item!r}: no key {'.'.join(walked)} in the config",
                    hint=f"did you mean {', '.join(close)}?" if close else "see `hat config show`",
                )
            else:
                node = node[part]
        else:
            raise ConfigError(f"bad --set {item!r}: {'.'.join(walked[:-1])} is a {type(node).__name__}, not a map")
    locations[".".join(parts)] = f"--set {item}"


def _materialize_reference(data: dict[str, Any], node: Any, walked: list[str]) -> Any:
    """``--set float_trainer.model.x=1`` where ``float_trainer.model`` is ``${model}``:
    replace the reference by a copy of ``model`` so the override changes only this use."""
    if not isinstance(node, str):
        return node
    match = _REF.fullmatch(node)
    if not match or match.group(1) not in data:
        return node
    copy_ = copy.deepcopy(data[match.group(1)])
    parent: Any = data
    for part in walked[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    key = walked[-1]
    parent[int(key) if isinstance(parent, list) else key] = copy_
    return _materialize_reference(data, copy_, walked)


# -- interpolation ------------------------------------------------------------------------


def _carry_locations(locations: dict[str, str], name: str, at: str) -> None:
    """``at: ${name}`` takes ``name``'s value, so an error about it should point where
    ``name`` was set (the task's YAML line, or the ``--set``), not at the reference."""
    prefix = f"{name}."
    for key in [k for k in locations if k == name or k.startswith(prefix)]:
        locations[at + key[len(name) :]] = locations[key]


def _interpolate(data: dict[str, Any], locations: dict[str, str]) -> dict[str, Any]:
    resolving: list[str] = []
    done: dict[str, Any] = {}

    def top(name: str, at: str) -> Any:
        if name in done:
            return done[name]
        if name not in data:
            close = difflib.get_close_matches(name, [str(k) for k in data], n=3, cutoff=0.5)
            raise ConfigError(
                f"${{{name}}} at {at} refers to no top-level key",
                where=locations.get(at),
                hint=f"did you mean {', '.join(close)}?" if close else f"define {name}: at the top of the config",
            )
        if name in resolving:
            raise ConfigError(f"${{{name}}} refers to itself through {' -> '.join((*resolving, name))}")
        resolving.append(name)
        done[name] = walk(data[name], name)
        resolving.pop()
        return done[name]

    def walk(value: Any, at: str) -> Any:
        if isinstance(value, dict):
            return {k: walk(v, f"{at}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{at}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and "${" in value:
            whole = _REF.fullmatch(value)
            if whole:
                resolved = copy.deepcopy(top(whole.group(1), at))
                _carry_locations(locations, whole.group(1), at)
                return resolved
            return _REF.sub(lambda m: str(top(m.group(1), at)), value)
        return value

    return {key: top(key, key) for key in data}
