"""A user error raised in a DataLoader worker reaches the user as it was raised.

torch re-raises an error of a worker process as ``type(text)``, where ``text`` is
"Caught X in DataLoader worker process N. Original Traceback ..." followed by the
worker's whole traceback. For a :class:`~hat.errors.UserError` (a sample missing a key,
a sample that is not HAT's msgpack, ...) that breaks "one message, what / where / next,
no traceback" whenever ``num_workers > 0`` (``hat_stages``' default is 4). The loader
the engine builds (:class:`UserErrorLoader`) rebuilds the original error from that text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from hat.errors import UserError

_FROM_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")
_WHERE, _NEXT = "  where: ", "  next:  "


def from_worker(exc: UserError) -> UserError:
    """The error a worker raised, without torch's wrapping; ``exc`` itself if it is not wrapped."""
    if not _FROM_WORKER.match(exc.message):
        return exc
    # The traceback ends with "<module>.<class>: <the error's render()>".
    marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    _, found, rendered = exc.message.rpartition(marker)
    if not found:
        return exc
    parts: dict[str, list[str]] = {"message": [], "where": [], "hint": []}
    field = "message"
    for line in rendered.rstrip("\n").split("\n"):
        if line.startswith(_WHERE) and field == "message":
            field, line = "where", line[len(_WHERE) :]
        elif line.startswith(_NEXT) and field != "hint":
            field, line = "hint", line[len(_NEXT) :]
        parts[field].append(line)
    message, where, hint = ("\n".join(parts[k]) or None for k in ("message", "where", "hint"))
    try:
        return type(exc)(message or exc.message, where=where, hint=hint)
    except TypeError:  # a subclass with another signature: keep the text, lose nothing
        return UserError(message or exc.message, where=where, hint=hint)


class UserErrorLoader(DataLoader):
    """A DataLoader that re-raises its workers' user errors as :func:`from_worker` rebuilds them."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except UserError as exc:
                raise from_worker(exc) from None
            yield batch
