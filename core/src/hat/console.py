"""Where HAT talks to people: results on stdout, progress and messages on stderr.

One place so that ``--quiet`` hides every progress bar, and so that a command's
result (a table, a config) can be piped while its progress stays on the terminal.
"""

from __future__ import annotations

from rich.console import Console
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


def progress(*, transient: bool = False) -> Progress:
    """A progress bar with counts, elapsed time and ETA; silent under ``--quiet``."""
    return Progress(
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


def info(message: str) -> None:
    """A status line on stderr, hidden by ``--quiet``."""
    if not _quiet:
        err.print(message)
