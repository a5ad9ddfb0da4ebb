"""The LMDB pack: one environment per split, ``<dst>/<split>_lmdb``.

Samples live under keys ``b"%08d" % index`` in order, each a msgpack map made by
:mod:`hat.data.codec`. A ``__meta__`` record is written last, in its own transaction,
after every sample is on disk: its presence is what makes a pack complete, so a pack
whose writer was killed is recognisable and refused instead of silently read short.

Readers open the environment read-only, without locks, and lazily per process: an LMDB
environment must not cross a ``fork``, and DataLoader workers are forked (or spawned)
from the process that built the dataset.
"""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lmdb

import hat
from hat.data import codec
from hat.errors import IncompletePack, UserError

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
    """True when ``path`` is an LMDB pack whose ``__meta__`` record was written."""
    path = Path(path)
    if not (path / "data.mdb").is_file():
        return False
    try:
        env = _reader_env(path)
    except lmdb.Error:  # e.g. being written by this very process
        return False
    with env.begin() as txn:
        return txn.get(META_KEY) is not None


class PackWriter:
    """Writes one split's pack; it is only kept once :meth:`finish` has run.

    Used as a context manager, an exception (or leaving without ``finish``) removes what
    was written, so a failed pack never lingers. A process killed outright leaves an
    incomplete pack that readers refuse and the next writer replaces.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.num_samples = 0
        self._batch: list[tuple[bytes, bytes]] = []
        self._batch_bytes = 0
        self._done = False
        _clear_destination(self.path, overwrite=overwrite)
        self.path.mkdir(parents=True)
        self._map_size = INITIAL_MAP_SIZE
        try:
            # sync=False: durability is enforced once, by explicit syncs around __meta__.
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path), map_size=self._map_size, subdir=True, sync=False, metasync=False, max_dbs=0
            )
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
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
        """Flush, then write ``__meta__`` last; returns the meta record written.

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
        self._env.sync(True)  # every sample is on disk before the record that vouches for them
        self._batch = [(META_KEY, codec.encode(record))]
        self._commit()
        self._env.sync(True)
        self._env.close()
        self._env = None
        self._done = True
        return record

    def abort(self) -> None:
        """Remove everything written; safe to call more than once."""
        if self._env is not None:
            self._env.close()
            self._env = None
        if not self._done:
            shutil.rmtree(self.path, ignore_errors=True)
        self._done = True

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
            self._batch = []
            self._batch_bytes = 0

    # -- context manager --------------------------------------------------------------
    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not self._done:
            self.abort()


def _clear_destination(path: Path, *, overwrite: bool) -> None:
    """Make room for a new pack, refusing to destroy a complete one or foreign files."""
    if not path.exists():
        return
    if not path.is_dir() or not set(os.listdir(path)) <= _LMDB_FILES:
        raise UserError(
            f"{path} exists and is not a HAT pack; refusing to replace it",
            hint="choose another --dst, or move that path away",
        )
    if is_complete_pack(path) and not overwrite:
        raise UserError(
            f"{path} is a complete pack already",
            hint="pass --overwrite to replace it",
        )
    _drop_reader_env(path)  # release our own mapping so the disk space really comes back
    shutil.rmtree(path)  # an incomplete pack (its writer died) or one to overwrite


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
            raise IncompletePack(
                f"{self.path} is an incomplete pack: packing never finished (no __meta__ record)",
                hint="re-run `hat pack` for this split (it replaces the incomplete pack)",
            )
        self.meta: dict[str, Any] = codec.decode(raw)
        if self.meta.get("format") != FORMAT or self.meta.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{self.path} has pack format {self.meta.get('format')!r} version "
                f"{self.meta.get('format_version')!r}; this hat reads {FORMAT!r} version {FORMAT_VERSION}",
                hint="re-pack the dataset with this version of hat (`hat pack ... --overwrite`)",
            )
        self._len = int(self.meta["num_samples"])

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        return codec.decode(self.raw(index))

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
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
        _envs[key] = env
    return env


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
