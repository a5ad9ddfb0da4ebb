"""Dataset-specific command-line options, taken from a packer's or generator's signature.

`hat pack nuscenes --version v1.0-mini`, `hat synth carfusion --num-sequences 4` and
`hat infer fcos3d --calib FILE` share one CLI command each, yet every dataset or task
has its own options. Rather than a second option system, a packer's ``__init__`` (a
generator function, an inferer's ``__call__``) declares its options as keyword-only
parameters with defaults and type annotations; this module turns the remaining
``--name value`` arguments into those keyword arguments, with one clear error for
anything it does not accept. An option whose default is ``None`` (``calib: Path |
None = None``) is one the task may require or do without; its value is converted to
the non-None type.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hat.errors import UserError

_CONVERTERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def declared_options(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Keyword-only parameters with defaults of ``target`` (a class means its ``__init__``,
    a callable object its ``__call__``).

    Required keyword-only parameters (a generator's ``seed``) are the CLI's own options.
    """
    sig = inspect.signature(target, eval_str=True)
    return {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def describe_options(target: Callable[..., Any]) -> str:
    """``--version v1.0-mini, --num-scenes 10`` (the defaults), for help and errors."""
    parts = []
    for name, param in declared_options(target).items():
        flag = "--" + name.replace("_", "-")
        if param.annotation is bool:
            parts.append(flag)
        elif param.default is None:
            parts.append(f"{flag} {_metavar(param.annotation)}")
        else:
            parts.append(f"{flag} {param.default}")
    return ", ".join(parts) or "none"


def _metavar(annotation: Any) -> str:
    """``PATH`` for ``Path | None``: what to write for an option without a default value."""
    return str(getattr(value_type(annotation), "__name__", "value")).upper()


def value_type(annotation: Any) -> Any:
    """``Path | None`` (or ``Optional[Path]``) -> ``Path``; any other annotation as it is."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def parse_extra_options(args: Sequence[str], target: Callable[..., Any], what: str) -> dict[str, Any]:
    """``["--num-scenes", "4", "--fast"]`` -> ``{"num_scenes": 4, "fast": True}``."""
    options = declared_options(target)
    flags = {"--" + n.replace("_", "-"): n for n in options}
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        flag, sep, inline = arg.partition("=")
        negated = flag.startswith("--no-") and ("--" + flag[5:]) in flags
        name = flags.get("--" + flag[5:] if negated else flag)
        if name is None:
            close = difflib.get_close_matches(flag, flags, n=3, cutoff=0.5)
            raise UserError(
                f"{what} has no option {flag!r}",
                hint=(f"did you mean {', '.join(close)}? " if close else "")
                + f"its options: {describe_options(target)}",
            )
        param = options[name]
        if param.annotation is bool:
            if sep:
                raise UserError(f"{flag} is a switch and takes no value", where=arg)
            parsed[name] = not negated
            i += 1
            continue
        if sep:
            raw = inline
            i += 1
        elif i + 1 < len(args):
            raw = args[i + 1]
            i += 2
        else:
            example = param.default if param.default is not None else _metavar(param.annotation)
            raise UserError(f"{flag} needs a value", hint=f"e.g. {flag} {example}")
        kind_type = value_type(param.annotation)
        convert = _CONVERTERS.get(kind_type, str)
        try:
            parsed[name] = convert(raw)
        except ValueError:
            kind = getattr(kind_type, "__name__", str(kind_type))
            raise UserError(f"{flag} expects {kind}, got {raw!r}") from None
    return parsed
