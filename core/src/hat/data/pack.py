"""The LMDB pack: one environment per split, ``<dst>/<split>_lmdb``.

Samples live under keys ``b"%08d" % index`` in order, each a msgpack map made by
:mod:`hat.data.codec`. A ``__meta__`` record is written last, in its own transaction,
after every sample is on disk: its presence is what makes a pack complete, so a pack
whose writer was killed is recognisable and refused instead of silently read short.

Readers open the environment read-only, without locks, and lazily per process: an LMDB
environment must not cross a ``fork``, and DataLoader workers are forked (or spawned)
from the process that built the dataset. Before mapping a data file they check it
against its own LMDB header, so a truncated file is an error message, not a SIGBUS.

A writer holds ``<dst>/.<split>_lmdb.lock`` for the whole run, so two runs never write
one destination, and writes a replacement beside an existing pack
(``<dst>/.<split>_lmdb.partial``), swapping it in only once complete: a re-pack that
fails leaves the old pack as it was.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import shutil
import socket
import struct
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmdb

import hat
from hat.data import codec
from hat.errors import IncompletePack, UnreadablePack, UserError

META_KEY = b"__meta__"
FORMAT = "hat-pack"
FORMAT_VERSION = 1

#: Commit a write transaction after this many samples or bytes, whichever comes first:
#: few enough commits to be fast, small enough batches to bound memory.
BATCH_SAMPLES = 256
BATCH_BYTES = 64 << 20
#: Initial map size; doubled whenever LMDB reports the map full.
INITIAL_MAP_SIZE = 1 << 30

#: Files LMDB creates in an environment directory; anything else there is not ours.
_LMDB_FILES = {"data.mdb", "lock.mdb"}


def sample_key(index: int) -> bytes:
    """The LMDB key of sample ``index``."""
    return b"%08d" % index


def is_complete_pack(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is an LMDB pack whose ``__meta__`` record was written.

    Raises :class:`~hat.errors.UnreadablePack` for a pack directory that cannot be read
    (see :func:`pack_state`): "cannot tell" must never read as "incomplete", or a writer
    would replace a complete pack it merely failed to open.
    """
    return pack_state(path) == "complete"


def pack_state(path: str | os.PathLike[str]) -> str:
    """``"absent"``, ``"incomplete"`` (readable, no ``__meta__``) or ``"complete"``.

    Only a readable LMDB whose keys are all sample keys and that lacks ``__meta__`` is
    incomplete (its writer died). Anything else that is there — a data file that cannot be
    opened, is not LMDB, is truncated, has keys or a meta record HAT does not write — raises
    :class:`~hat.errors.UnreadablePack`, naming the file and what to do.
    """
    path = Path(path)
    data_file = path / "data.mdb"
    if not data_file.is_file():
        return "absent"
    env = _reader_env(path)
    with env.begin(buffers=False) as txn:
        raw_meta = txn.get(META_KEY)
        if raw_meta is None:
            cursor = txn.cursor()
            keys = [cursor.key() if cursor.first() else None, cursor.key() if cursor.last() else None]
            foreign = [k for k in keys if k is not None and not _is_sample_key(k)]
            if foreign:
                raise UnreadablePack(
                    f"{path} is not a HAT pack: it holds key {foreign[0]!r}, which HAT never writes",
                    where=str(data_file),
                    hint="point --dst elsewhere, or pass --overwrite to replace it",
                )
            return "incomplete"
    _decode_meta(path, raw_meta)
    return "complete"


def _is_sample_key(key: bytes) -> bool:
    return len(key) == 8 and key.isdigit()


def _decode_meta(path: Path, raw: bytes) -> dict[str, Any]:
    """The ``__meta__`` record of the pack at ``path``, or UnreadablePack when it is not HAT's."""
    try:
        meta = codec.decode(raw)
    except Exception as exc:  # msgpack's ExtraData for a pickle, and its other refusals
        meta = exc
    if not isinstance(meta, dict) or "format" not in meta:
        why = f"msgpack cannot read it: {meta}" if isinstance(meta, Exception) else "it is no HAT meta record"
        raise UnreadablePack(
            f"{path} is not a HAT pack: its __meta__ record is not HAT's ({why}); "
            "LMDB files written by other tools (e.g. with pickled values) cannot be read",
            where=str(path / "data.mdb"),
            hint="pack the raw dataset with `hat pack <dataset> --src <raw> --dst <dir> --split <split> --overwrite`",
        )
    return meta


class PackWriter:
    """Writes one split's pack; it is only kept once :meth:`finish` has run.

    Used as a context manager, an exception (or leaving without ``finish``) removes what
    was written, so a failed pack never lingers. Where a pack already exists (one to
    overwrite, or an incomplete one) the new pack is written beside it and swapped in by
    :meth:`finish`, so a failure — a bad record, a kill, a full disk — leaves the old one
    as it was. Where nothing exists it is written in place: a process killed outright
    leaves an incomplete pack that readers refuse and the next writer replaces.

    The writer holds the destination's lock (:class:`DestinationLock`) from construction
    until :meth:`finish` or :meth:`abort`, so a second writer refuses instead of deleting
    a pack in progress.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.num_samples = 0
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_bytes = 0
        self._done = False
        self._env: lmdb.Environment | None = None
        self._lock = DestinationLock(self.path)
        try:
            replacing = _check_destination(self.path, overwrite=overwrite)
            # Write beside an existing pack (same directory, so the swap is a rename).
            self._write_path = _partial_path(self.path) if replacing else self.path
            for leftover in (_partial_path(self.path), _old_path(self.path)):
                if leftover.exists():  # a killed writer's; we hold the lock, so it is no one's now
                    shutil.rmtree(leftover)
            self._write_path.mkdir(parents=True)
            self._map_size = INITIAL_MAP_SIZE
            try:
                # sync=False: durability is enforced once, by explicit syncs around __meta__.
                self._env = lmdb.open(
                    str(self._write_path),
                    map_size=self._map_size,
                    subdir=True,
                    sync=False,
                    metasync=False,
                    max_dbs=0,
                )
            except BaseException:
                shutil.rmtree(self._write_path, ignore_errors=True)
                raise
        except BaseException:
            self._lock.release()
            raise

    # -- writing ----------------------------------------------------------------------
    def write(self, sample: dict[str, Any]) -> int:
        """Append one sample; returns its index."""
        return self.write_encoded(codec.encode(sample))

    def write_encoded(self, data: bytes) -> int:
        """Append one sample already encoded by :func:`hat.data.codec.encode` (e.g. in a worker)."""
        if self._env is None:
            raise RuntimeError("PackWriter is closed")
        index = self.num_samples
        self._batch.append((sample_key(index), data))
        self._batch_bytes += len(data)
        self.num_samples += 1
        if len(self._batch) >= BATCH_SAMPLES or self._batch_bytes >= BATCH_BYTES:
            self._commit()
        return index

    def finish(self, meta: dict[str, Any]) -> dict[str, Any]:
        """Flush, then write ``__meta__`` last, then swap the pack in; returns the meta record written.

        ``meta`` must name ``dataset``, ``split`` and ``source``; extra keys are kept.
        """
        missing = [k for k in ("dataset", "split", "source") if k not in meta]
        if missing:
            raise ValueError(f"pack meta is missing {', '.join(missing)}")
        if self._env is None:
            raise RuntimeError("PackWriter is closed")
        record = {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "hat_version": hat.__version__,
            **meta,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "num_samples": self.num_samples,
        }
        self._commit()
        self._sync()  # every sample is on disk before the record that vouches for them
        self._batch = [(META_KEY, codec.encode(record))]
        self._commit()
        self._sync()
        self._env.close()
        self._env = None
        if self._write_path != self.path:
            _drop_reader_env(self.path)  # release our own mapping of the old pack
            _swap_in(self._write_path, self.path)
        self._done = True
        self._lock.release()
        return record

    def abort(self) -> None:
        """Remove everything written (never the pack it was to replace); safe to call more than once."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if not self._done:
            shutil.rmtree(self._write_path, ignore_errors=True)
        self._done = True
        self._lock.release()

    def _commit(self) -> None:
        assert self._env is not None
        while self._batch:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in self._batch:
                        txn.put(key, value)
            except lmdb.MapFullError:  # the transaction was rolled back: grow and redo it
                self._map_size *= 2
                self._env.set_mapsize(self._map_size)
                continue
            except (lmdb.Error, OSError) as exc:
                raise _write_error(self._write_path, exc) from exc
            self._batch = []
            self._batch_bytes = 0

    def _sync(self) -> None:
        assert self._env is not None
        try:
            self._env.sync(True)
        except (lmdb.Error, OSError) as exc:
            raise _write_error(self._write_path, exc) from exc

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._done:
            self.abort()


def _write_error(write_path: Path, exc: BaseException) -> UserError:
    """A failed LMDB write as what the user can act on: usually a full disk.

    LMDB turns a short write — what a full disk gives — into EIO, hence
    "mdb_txn_commit: Input/output error"; a real ENOSPC says so itself.
    """
    data_file = write_path / "data.mdb"
    text = str(exc)
    code = getattr(exc, "errno", None)
    try:
        free = f"{shutil.disk_usage(write_path.parent).free / 2**20:.0f} MiB free there now"
    except OSError:
        free = "free space unknown"
    if code == errno.ENOSPC or "No space left" in text:
        what = "the disk is full (no space left on the device)"
    elif code == errno.EIO or "Input/output error" in text:
        what = "the disk is full or failing (LMDB reports a short write, what a full disk gives, as an I/O error)"
    else:
        return UserError(
            f"writing the pack failed: {text}", where=str(data_file), hint="check the disk and re-run `hat pack`"
        )
    return UserError(
        f"writing the pack failed: {what}: {text}",
        where=f"{data_file} ({free})",
        hint="free space on that disk (or pack to a --dst on another disk) and re-run `hat pack`; "
        "an existing pack there was left as it was",
    )


def _partial_path(path: Path) -> Path:
    return path.parent / f".{path.name}.partial"


def _old_path(path: Path) -> Path:
    return path.parent / f".{path.name}.old"


def _check_destination(path: Path, *, overwrite: bool) -> bool:
    """May a new pack go to ``path``? Returns whether it replaces one there (else raises).

    Refuses foreign files always, and without ``overwrite`` a complete pack and anything
    that cannot be read as a pack (:func:`pack_state`): only a readable pack without
    ``__meta__`` is incomplete and replaced unasked.
    """
    if not path.exists():
        return False
    if not path.is_dir() or not set(os.listdir(path)) <= _LMDB_FILES:
        raise UserError(
            f"{path} exists and is not a HAT pack; refusing to replace it",
            hint="choose another --dst, or move that path away",
        )
    if not overwrite:
        try:
            state = pack_state(path)
        except UnreadablePack as exc:
            raise UnreadablePack(f"{exc.message}; left untouched", where=exc.where, hint=exc.hint) from None
        if state == "complete":
            raise UserError(
                f"{path} is a complete pack already",
                hint="pass --overwrite to replace it",
            )
    return True


# renameat2(2) with RENAME_EXCHANGE swaps two directories atomically (Linux >= 3.15).
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _swap_in(new: Path, path: Path) -> None:
    """Put the finished pack ``new`` at ``path`` and delete what was there.

    One atomic exchange where the OS has it; otherwise two renames, with the old pack kept
    at ``.<name>.old`` in between (the next writer removes a leftover one).
    """
    if not _exchange(new, path):
        old = _old_path(path)
        os.rename(path, old)
        os.rename(new, path)
        new = old
    shutil.rmtree(new)  # now the old pack


def _exchange(a: Path, b: Path) -> bool:
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    rc = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # filesystem or kernel without it
        return False
    raise OSError(err, os.strerror(err), str(b))


class DestinationLock:
    """``<dst>/.<split>_lmdb.lock``: one writer per pack destination.

    Taken with ``fcntl.flock`` rather than ``O_CREAT|O_EXCL``: the kernel drops a flock
    when its holder dies however it dies (SIGKILL, OOM, power loss of a container), so a
    crashed run never leaves a lock that blocks the next one; an O_EXCL file would outlive
    it and need guessing whether its pid is still alive (on which host?). The file holds the
    holder's pid, host and command, only to name it in the refusal; it is left in place on
    release (unlinking a flock file races with a run about to lock it).
    """

    def __init__(self, pack: Path) -> None:
        self.path = pack.parent / f".{pack.name}.lock"
        pack.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder()
            os.close(self._fd)
            self._fd = None
            raise UserError(
                f"another `hat pack` is writing {pack} ({holder}); refusing to touch it",
                where=str(self.path),
                hint="wait for that run to finish (or stop it), or pack to another --dst",
            ) from None
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(info).encode(), 0)

    def _holder(self) -> str:
        try:
            info = json.loads(self.path.read_text())
            return f"pid {info['pid']} on {info['host']}: {info['command']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "its pid and command are not written yet"

    def release(self) -> None:
        """Drop the lock; safe to call more than once."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


class PackReader:
    """Random access to a complete pack: ``len(reader)``, ``reader[i]``, ``reader.meta``.

    Picklable and safe to hand to DataLoader workers: each process opens its own
    environment on first use (see :func:`_reader_env`), never one inherited by a fork.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._env: lmdb.Environment | None = None
        self._pid: int | None = None
        if not self.path.exists():
            raise UserError(
                f"packed dataset not found: {self.path}",
                hint="create it with `hat pack <dataset> --src <raw> --dst <dir> --split <split>`",
            )
        if not self.path.is_dir():
            raise UserError(
                f"{self.path} is not a packed dataset (a pack is a directory, <dst>/<split>_lmdb)",
                hint="point data_path at the directory `hat pack` created",
            )
        raw = self._get(META_KEY) if (self.path / "data.mdb").is_file() else None
        if raw is None:
            self._refuse_foreign_lmdb()
            raise IncompletePack(
                f"{self.path} is an incomplete pack: packing never finished (no __meta__ record)",
                hint="re-run `hat pack` for this split (it replaces the incomplete pack)",
            )
        self.meta: dict[str, Any] = _decode_meta(self.path, raw)
        if self.meta.get("format") != FORMAT or self.meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path} has pack format {self.meta.get('format')!r} version "
                f"{self.meta.get('format_version')!r}; this hat reads {FORMAT!r} version {FORMAT_VERSION}",
                hint="re-pack the dataset with this version of hat (`hat pack ... --overwrite`)",
            )
        self._len = int(self.meta["num_samples"])

    def _refuse_foreign_lmdb(self) -> None:
        """An LMDB without ``__meta__`` that another tool wrote is not HAT's, not incomplete.

        Calling it incomplete would send the user to `hat pack`, which refuses to replace
        a foreign LMDB without ``--overwrite`` (:func:`pack_state`); say what it is instead.
        """
        if not (self.path / "data.mdb").is_file():
            return
        try:
            pack_state(self.path)
        except UnreadablePack as exc:
            raise UnreadablePack(
                exc.message,
                where=exc.where,
                hint="point data_path at a pack `hat pack` wrote, or pack the raw dataset with "
                "`hat pack <dataset> --src <raw> --dst <dir> --split <split> --overwrite`",
            ) from None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.raw(index)
        try:
            return codec.decode(raw)
        except Exception as exc:  # not HAT's msgpack: a pack rewritten by another tool, or corrupt
            raise UnreadablePack(
                f"sample {index} of pack {self.path} cannot be decoded: {type(exc).__name__}: {exc}",
                where=str(self.path / "data.mdb"),
                hint="re-pack the dataset (`hat pack ... --overwrite`)",
            ) from None

    def raw(self, index: int) -> bytes:
        """Sample ``index`` still encoded: to compare or copy packs without decoding."""
        i = index.__index__()
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"sample index {index} out of range for a pack of {self._len} samples")
        raw = self._get(sample_key(i))
        if raw is None:
            raise IncompletePack(f"{self.path} has no sample {i} although its meta says {self._len}")
        return raw

    def _get(self, key: bytes) -> bytes | None:
        if self._env is None or self._pid != os.getpid():
            self._env = _reader_env(self.path)
            self._pid = os.getpid()
        # A short transaction per read: cheap next to decoding, and safe from any thread.
        with self._env.begin(buffers=False) as txn:
            return txn.get(key)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_env": None, "_pid": None}

    def __repr__(self) -> str:
        return f"PackReader({str(self.path)!r}, {self._len} samples)"


# -- read-only environments, one per pack file per process --------------------------
# py-lmdb refuses to open one environment twice in a process, and an environment must not
# be used across a fork (its copy in a forked child is even refused a re-open). So
# readers share one environment per data file, and a forked child closes the copies it
# inherited — for a read-only, lock-free environment that only unmaps the child's view,
# leaving the parent's untouched — before opening its own.

_envs: dict[tuple[int, int], lmdb.Environment] = {}
_envs_pid = os.getpid()


def _reader_env(path: Path) -> lmdb.Environment:
    """This process's read-only environment of the pack at ``path``."""
    _forget_inherited_envs()
    key = _file_id(path)
    env = _envs.get(key)
    if env is None:
        _check_data_file(path / "data.mdb")
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
        except lmdb.Error as exc:  # permissions, MDB_INVALID, ...: what it says, where, what to do
            raise _unreadable(path / "data.mdb", f"LMDB cannot open it: {exc}") from None
        _envs[key] = env
    return env


# Offsets in an LMDB data file (64-bit build): each of the two meta pages starts with a
# 16-byte page header, then MDB_meta: magic, version, address, mapsize, the free-list and
# main MDB_db records (the first one's md_pad holds the page size), last page, txn id.
_MDB_MAGIC = 0xBEEFC0DE
_META_AT = 16
_PSIZE_AT = _META_AT + 24
_LAST_PG_AT = _META_AT + 120
_META_END = _LAST_PG_AT + 16


def _check_data_file(data_file: Path) -> None:
    """Refuse a data file that is not LMDB or is shorter than its header says, before mapping it.

    LMDB maps the file and trusts its header: reading a page past the end of a truncated
    file is a SIGBUS that kills the process without a word. The newer of the two meta pages
    names the last page in use; the file must reach its end.
    """
    try:
        size = os.path.getsize(data_file)
        with open(data_file, "rb") as f:
            first = f.read(_META_END)
            if len(first) < _META_END or struct.unpack_from("<I", first, _META_AT)[0] != _MDB_MAGIC:
                raise _unreadable(data_file, "it is not an LMDB data file (no LMDB header)")
            psize = struct.unpack_from("<I", first, _PSIZE_AT)[0]
            if not 512 <= psize <= 1 << 16:
                raise _unreadable(data_file, f"its LMDB header names an impossible page size ({psize})")
            f.seek(psize)
            second = f.read(_META_END)
    except OSError as exc:  # permissions, an I/O error, a directory named data.mdb
        raise _unreadable(data_file, f"it cannot be read: {exc.strerror or exc}") from None
    metas = [struct.unpack_from("<QQ", page, _LAST_PG_AT) for page in (first, second) if len(page) == _META_END]
    last_pg, _ = max(metas, key=lambda m: m[1])  # the meta page of the latest transaction
    needed = max(2, last_pg + 1) * psize
    if size < needed:
        raise _unreadable(
            data_file,
            f"it is truncated: {size} bytes, but its LMDB header says {needed} "
            "(a copy or download cut short, or a full disk)",
        )


def _unreadable(data_file: Path, why: str) -> UnreadablePack:
    return UnreadablePack(
        f"{data_file.parent} cannot be read as a pack: {why}",
        where=str(data_file),
        hint="re-pack it with `hat pack <dataset> --src <raw> --dst <dir> --split <split> --overwrite` "
        "(or restore the file)",
    )


def _drop_reader_env(path: Path) -> None:
    """Close this process's environment of ``path`` (before the pack is deleted)."""
    _forget_inherited_envs()
    try:
        env = _envs.pop(_file_id(path), None)
    except FileNotFoundError:
        return
    if env is not None:
        env.close()


def _forget_inherited_envs() -> None:
    global _envs_pid
    if _envs_pid != os.getpid():
        for env in _envs.values():
            env.close()
        _envs.clear()
        _envs_pid = os.getpid()


def _file_id(path: Path) -> tuple[int, int]:
    # By inode, not path: a pack deleted and re-created at the same path is a new file.
    st = os.stat(path / "data.mdb")
    return st.st_dev, st.st_ino
