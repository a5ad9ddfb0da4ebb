"""Dataset-specific command-line options, taken from a packer's or generator's signature.

`hat pack nuscenes --version v1.0-mini` and `hat synth carfusion --num-sequences 4`
share one CLI command each, yet every dataset has its own options. Rather than a
second option system, a packer's ``__init__`` (or a generator function) declares its
options as keyword-only parameters with defaults and type annotations; this module
turns the remaining ``--name value`` arguments into those keyword arguments, with one
clear error for anything it does not accept.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hat.errors import UserError

_CONVERTERS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}


def declared_options(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """Keyword-only parameters with defaults of ``target`` (a class means its ``__init__``).

    Required keyword-only parameters (a generator's ``seed``) are the CLI's own options.
    """
    sig = inspect.signature(target, eval_str=True)
    return {n: p for n, p in sig.parameters.items() if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def describe_options(target: Callable[..., Any]) -> str:
    """``--version v1.0-mini, --num-scenes 10`` (the defaults), for help and errors."""
    parts = []
    for name, param in declared_options(target).items():
        flag = "--" + name.replace("_", "-")
        parts.append(flag if param.annotation is bool else f"{flag} {param.default}")
    return ", ".join(parts) or "none"


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
            raise UserError(f"{flag} needs a value", hint=f"e.g. {flag} {param.default}")
        convert = _CONVERTERS.get(param.annotation, str)
        try:
            parsed[name] = convert(raw)
        except ValueError:
            kind = getattr(param.annotation, "__name__", str(param.annotation))
            raise UserError(f"{flag} expects {kind}, got {raw!r}") from None
    return parsed
