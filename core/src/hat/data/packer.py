"""The generic pack driver: a dataset's :class:`Packer` says *what*, :func:`run_pack` says *how*.

A packer lists its source records cheaply in the main process and turns each record into
samples in worker processes. The driver owns everything else — the worker pool, ordering,
progress, bad records, and never leaving a half-written pack — so every dataset behaves
the same way under ``hat pack``.

Results are consumed in record order whatever the number of workers, so a pack is
byte-for-byte the same sample sequence with ``--num-workers 0`` or ``8``.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hat import console
from hat.data import codec
from hat.data.pack import PackReader, PackWriter
from hat.errors import BadSourceRecord, UserError


class Packer(ABC):
    """A dataset's packer: lists source records (cheap, main process), turns each into samples (workers).

    Subclasses set :attr:`dataset`, may set :attr:`layout_hint` (shown when ``src`` holds
    no records) and add keyword-only options with defaults to ``__init__``. A packer is
    pickled once to each worker, so keep its state small and picklable.
    """

    dataset: ClassVar[str]
    #: What the raw layout should look like, e.g. "<src>/list/train_gt.txt".
    layout_hint: ClassVar[str | None] = None
    #: Also log a line every this many records (for logs of long packs, where a bar does not show).
    progress_every: ClassVar[int | None] = None

    def __init__(self, src: Path, split: str) -> None:
        self.src = Path(src)
        self.split = split

    @abstractmethod
    def records(self) -> Sequence[Any]:
        """Picklable record descriptors (e.g. file paths); may raise UserError for a bad layout."""

    @abstractmethod
    def pack_record(self, record: Any) -> Iterable[dict]:
        """Zero or more samples of one record; raise BadSourceRecord(reason, file=, line=) for bad input."""

    def finish(self, dst: Path, reader: PackReader) -> None:
        """Optional hook once the pack is complete (e.g. write an inspection JSON next to it)."""
        return None

    def describe_source(self) -> str:
        """What the pack's meta records as its source."""
        return str(self.src)

    def extra_meta(self) -> dict[str, Any]:
        """Extra keys for the pack's ``__meta__`` record (e.g. class names)."""
        return {}


@dataclass
class PackSummary:
    """What one run of :func:`run_pack` did."""

    path: Path
    num_samples: int
    num_records: int
    num_skipped: int
    skipped: list[str] = field(default_factory=list)  # "file:line: reason" of each skipped record
    seconds: float = 0.0


def pack_path(dst: Path, split: str) -> Path:
    """Where the pack of ``split`` lives under ``dst``."""
    return Path(dst) / f"{split}_lmdb"


def run_pack(
    packer: Packer,
    dst: Path,
    *,
    num_workers: int = 0,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> PackSummary:
    """Pack every record of ``packer`` into ``<dst>/<split>_lmdb``.

    A :class:`BadSourceRecord` stops the run (and is re-raised, naming file and line)
    unless ``skip_bad``, which skips and counts it. Any failure removes the partial pack.
    """
    start = time.perf_counter()
    if not packer.src.exists():
        raise UserError(f"source not found: {packer.src}", hint="pass the raw dataset's directory as --src")
    records = list(packer.records())
    if not records:
        raise UserError(
            f"no {packer.dataset} records for split {packer.split!r} under {packer.src}",
            where=str(packer.src),
            hint=f"expected layout: {packer.layout_hint}" if packer.layout_hint else None,
        )
    path = pack_path(dst, packer.split)
    skipped: list[str] = []
    with (
        PackWriter(path, overwrite=overwrite) as writer,
        console.progress() as bar,
        closing(_convert(packer, records, num_workers)) as outcomes,  # closing stops the pool on error
    ):
        task = bar.add_task(f"pack {packer.dataset}/{packer.split}", total=len(records))
        for done, outcome in enumerate(outcomes, start=1):
            if isinstance(outcome, BadSourceRecord):
                if not skip_bad:
                    raise outcome
                skipped.append(_describe_bad(outcome))
            else:
                for data in outcome:
                    writer.write_encoded(data)
            bar.advance(task)
            if packer.progress_every and done % packer.progress_every == 0 and done < len(records):
                console.info(f"pack {packer.dataset}/{packer.split}: {done}/{len(records)} records")
        if writer.num_samples == 0:
            raise UserError(
                f"{packer.dataset} split {packer.split!r} produced no samples from {len(records)} records",
                where=str(packer.src),
                hint="check the source data; every record was empty or skipped",
            )
        writer.finish(
            {
                "dataset": packer.dataset,
                "split": packer.split,
                "source": packer.describe_source(),
                "num_records": len(records),
                "num_skipped": len(skipped),
                **packer.extra_meta(),
            }
        )
    packer.finish(Path(dst), PackReader(path))
    summary = PackSummary(path, writer.num_samples, len(records), len(skipped), skipped, time.perf_counter() - start)
    console.info(
        f"packed {summary.num_samples} samples from {summary.num_records} records into {path}"
        + (f" ({summary.num_skipped} bad records skipped)" if skipped else "")
    )
    return summary


def _describe_bad(err: BadSourceRecord) -> str:
    where = err.file if err.line is None else f"{err.file}:{err.line}"
    return f"{where}: {err.reason}"


# -- conversion, in-process or in a pool ------------------------------------------------
# Module-level functions and a module global so that workers work under "spawn" as well
# as "fork": the packer reaches each worker once, through the pool initializer.

_Outcome = list[bytes] | BadSourceRecord
_worker_packer: Packer | None = None


def _convert(packer: Packer, records: list[Any], num_workers: int) -> Generator[_Outcome, None, None]:
    """Each record's encoded samples (or its BadSourceRecord), in record order."""
    if num_workers <= 0:
        for record in records:
            yield _pack_one(packer, record)
        return
    # Several records per task amortise the IPC; small enough that progress stays lively.
    chunksize = max(1, min(16, len(records) // (num_workers * 8)))
    with multiprocessing.Pool(num_workers, initializer=_init_worker, initargs=(packer,)) as pool:
        for result in pool.imap(_pack_in_worker, records, chunksize=chunksize):
            yield _from_wire(result)
    # Leaving the with block early (an error) terminates the pool.


def _pack_one(packer: Packer, record: Any) -> _Outcome:
    try:
        return [codec.encode(sample) for sample in packer.pack_record(record)]
    except BadSourceRecord as err:
        return err


def _init_worker(packer: Packer) -> None:
    global _worker_packer
    _worker_packer = packer


def _pack_in_worker(record: Any) -> tuple[str, Any]:
    """Convert one record, sending failures as plain data.

    Exceptions are flattened because an exception that cannot be rebuilt in the parent
    (BadSourceRecord's keyword-only constructor, many third-party ones) would break the
    pool's result thread and hang the run.
    """
    assert _worker_packer is not None, "worker was not initialised with a packer"
    try:
        outcome = _pack_one(_worker_packer, record)
    except UserError as err:
        return "user", (err.message, err.where, err.hint)
    except Exception:
        return "error", (repr(record), traceback.format_exc())
    if isinstance(outcome, BadSourceRecord):
        return "bad", (outcome.reason, outcome.file, outcome.line)
    return "ok", outcome


def _from_wire(result: tuple[str, Any]) -> _Outcome:
    kind, payload = result
    if kind == "ok":
        return payload
    if kind == "bad":
        reason, file, line = payload
        return BadSourceRecord(reason, file=file, line=line)
    if kind == "user":
        message, where, hint = payload
        raise UserError(message, where=where, hint=hint)
    record, worker_traceback = payload
    raise RuntimeError(f"packing record {record} failed in a worker process:\n{worker_traceback}")
