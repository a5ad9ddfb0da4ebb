"""Where HAT talks to people: results on stdout, progress and messages on stderr.

One place so that ``--quiet`` hides every progress bar, and so that a command's
result (a table, a config) can be piped while its progress stays on the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: Results (tables, YAML) that a user may pipe.
out = Console(highlight=False, soft_wrap=True)
#: Messages, warnings and progress bars.
err = Console(stderr=True, highlight=False)

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


@contextmanager
def quieted() -> Iterator[None]:
    """``--quiet`` for a block: a command that runs other commands inside it (``hat
    fallback`` calibrating once per step) shows its own lines, not theirs."""
    global _quiet
    before = _quiet
    _quiet = True
    try:
        yield
    finally:
        _quiet = before


_active: Progress | None = None


@contextmanager
def progress(*, transient: bool = False) -> Iterator[Progress]:
    """A progress display with counts, elapsed time and ETA; silent under ``--quiet``.

    Nested uses share the outer display (rich allows one live display at a time): an
    inner loop's bars appear under the outer ones — `hat demo`'s steps over a training
    run's steps — and are removed when the inner block ends.
    """
    global _active
    if _active is not None:
        before = set(_active.task_ids)
        try:
            yield _active
        finally:
            for task_id in set(_active.task_ids) - before:
                _active.remove_task(task_id)
        return
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=_quiet,
    )
    _active = bar
    try:
        with bar:
            yield bar
    finally:
        _active = None


def info(message: str) -> None:
    """A status line on stderr, hidden by ``--quiet``."""
    if not _quiet:
        err.print(message)


def warn(message: str) -> None:
    """A warning on stderr (shown even with --quiet: it changes what the user should do)."""
    err.print(f"[yellow]warning:[/yellow] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
