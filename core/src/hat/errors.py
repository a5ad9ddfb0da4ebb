"""The two kinds of failure the CLI distinguishes.

A user can fix a :class:`UserError` (bad input, bad config, a missing prerequisite):
the CLI prints its message and exits 2, without a traceback. Anything else that goes
wrong while doing the work is a bug or an environment problem: exit 1, traceback on
``--debug``. Keeping the split in one place lets every layer raise the right one
without knowing about the CLI.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix: what was wrong, where, and what to do next."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        lines = [self.message]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.hint:
            lines.append(f"  next:  {self.hint}")
        return "\n".join(lines)


class ConfigError(UserError):
    """A config file or override that cannot be loaded, merged or built."""


class PluginError(UserError):
    """Installed plugins that cannot be loaded together."""


class BadSourceRecord(UserError):
    """A record of a raw dataset that a packer cannot read.

    Carries the file and line so that the user can open the exact place; the pack
    driver either stops on it or, with ``--skip-bad``, skips and counts it.
    """

    def __init__(self, reason: str, *, file: str, line: int | None = None):
        self.reason = reason
        self.file = str(file)
        self.line = line
        where = self.file if line is None else f"{self.file}:{line}"
        super().__init__(
            f"bad source record: {reason}",
            where=where,
            hint="fix the record, or pass --skip-bad to skip such records and count them",
        )


class IncompletePack(UserError):
    """A packed dataset without its ``__meta__`` record: packing never finished."""


class UnreadablePack(UserError):
    """A pack directory that exists but cannot be read as a whole HAT pack.

    Its data file is unreadable (permissions), not LMDB, shorter than LMDB's own header
    says (truncated), or holds values that are not HAT's msgpack. It is never taken for an
    incomplete pack: a writer refuses to touch it unless told ``--overwrite``.
    """
