"""Nothing a user types loses a pack (issue 12): one table of bad inputs for ``hat pack``.

Each row sets up what a user could have on disk (a complete pack, a truncated one, one
being written by another run, ...), runs ``hat pack`` as typed, and checks the exit code,
that the message says what, where and what next without a traceback, and what is left on
disk. A new plugin extends the table with its own rows (:data:`BAD_PACK_INPUTS`).

Tests run as root, so ``chmod 000`` blocks nothing: the unreadable pack is simulated by an
``lmdb.open`` that fails the way LMDB does on EACCES (``<path>: Permission denied``). The
truncated pack runs ``hat`` in a subprocess, because before the fix it dies of SIGBUS.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import pytest

from hat.data import pack as pack_module
from hat.data.dataset import PackedDataset
from hat.data.pack import PackReader, PackWriter
from hat.errors import UserError
from hat.plugins import PluginHost
from hat.testing import run_cli

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))}
STALL = [sys.executable, "-m", "tests.core.packers_for_tests", "stall"]  # packs, then hangs at a record
NUM_SAMPLES = 12  # hat synth toyset: 3 files of 4 lines
# `hat ARGS` in a fresh process with the toy plugin, for rows that could kill the process.
ISOLATED_HAT = """
import sys
from hat.testing import run_cli, use_host
from tests.core.plugin_for_tests import DIST, ToyPlugin
with use_host((ToyPlugin(), DIST)):
    code, out, err = run_cli(*sys.argv[1:])
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
"""


@dataclass
class Ctx:
    """What a row's setup gets: the paths of a user's session and ways to tamper with it."""

    tmp: Path
    raw: Path
    data: Path
    monkeypatch: pytest.MonkeyPatch
    cleanups: list[Callable[[], None]] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)  # extra {placeholders} for `says`

    @property
    def pack(self) -> Path:
        return self.data / "train_lmdb"

    @property
    def data_mdb(self) -> Path:
        return self.pack / "data.mdb"


@dataclass(frozen=True)
class BadPackInput:
    """One row: a setup, the extra ``hat pack`` arguments, what it must say, what it leaves.

    ``leaves``: "old pack" (the complete pack from before, byte for byte), "as set up"
    (whatever setup left at the pack path, byte for byte) or "nothing".
    """

    id: str
    setup: Callable[[Ctx], None]
    says: tuple[str, ...]
    args: tuple[str, ...] = ()
    leaves: str = "old pack"
    isolated: bool = False


# -- setups ---------------------------------------------------------------------------------
def add_bad_record(ctx: Ctx) -> None:
    with open(ctx.raw / "train" / "001.txt", "a") as f:
        f.write("oops\n")


def _failing_writes(error: BaseException) -> Callable[[Ctx], None]:
    """Every write transaction's commit fails with ``error`` (a full disk, as LMDB reports it)."""

    class FailingTxn:
        def __init__(self, txn: lmdb.Transaction) -> None:
            self.txn = txn

        def __enter__(self) -> lmdb.Transaction:
            return self.txn

        def __exit__(self, *exc: object) -> None:
            self.txn.abort()
            raise error

    class Env:
        def __init__(self, env: lmdb.Environment) -> None:
            self.env = env

        def begin(self, write: bool = False, **kw: object) -> object:
            txn = self.env.begin(write=write, **kw)
            return FailingTxn(txn) if write else txn

        def __getattr__(self, name: str) -> object:
            return getattr(self.env, name)

    def setup(ctx: Ctx) -> None:
        real_open = lmdb.open

        def open_(path: str, **kw: object) -> object:
            env = real_open(path, **kw)
            return env if kw.get("readonly") else Env(env)

        ctx.monkeypatch.setattr(pack_module.lmdb, "open", open_)

    return setup


def no_pack_then(then: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
    def setup(ctx: Ctx) -> None:
        shutil.rmtree(ctx.pack)
        then(ctx)

    return setup


def unreadable(ctx: Ctx) -> None:
    """Like ``chmod 000 data.mdb`` for a non-root user: LMDB's open fails with EACCES."""
    real_open = lmdb.open

    def open_(path: str, **kw: object) -> lmdb.Environment:
        if kw.get("readonly") and Path(path) == ctx.pack:
            raise lmdb.Error(f"{path}: Permission denied")
        return real_open(path, **kw)

    ctx.monkeypatch.setattr(pack_module.lmdb, "open", open_)


def not_lmdb(ctx: Ctx) -> None:
    ctx.data_mdb.write_bytes(b"this is not an LMDB file\n" * 1000)


def truncated(ctx: Ctx) -> None:
    os.truncate(ctx.data_mdb, 8192)  # the two meta pages survive; the pages they point to do not


def _pickle_lmdb(ctx: Ctx, items: dict[bytes, object]) -> None:
    shutil.rmtree(ctx.pack)
    env = lmdb.open(str(ctx.pack), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, pickle.dumps(value, protocol=4))
    env.close()


def pickle_lmdb_with_meta(ctx: Ctx) -> None:
    _pickle_lmdb(ctx, {b"__meta__": {"num_samples": 2}, b"00000000": {"a": 1}, b"00000001": {"a": 2}})


def pickle_lmdb_other_keys(ctx: Ctx) -> None:
    _pickle_lmdb(ctx, {b"img_0": {"a": 1}, b"img_1": {"a": 2}, b"length": 2})


def locked_by_another_run(ctx: Ctx) -> None:
    """Another `hat pack`-like run (the stalling test packer) is half-way through this destination."""
    src = ctx.tmp / "other_src"
    src.mkdir()
    (src / "records.txt").write_text("".join(f"{i}\n" for i in range(50)))
    marker = ctx.tmp / "stalled"
    shutil.rmtree(ctx.pack)
    proc = subprocess.Popen(
        [*STALL, str(src), str(ctx.data), "30", str(marker)],
        cwd=REPO,
        env=ENV,
        stderr=subprocess.PIPE,
    )

    def stop() -> None:
        proc.kill()
        proc.wait()

    ctx.cleanups.append(stop)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the other packing run never got going"
        time.sleep(0.05)
    ctx.names["pid"] = str(proc.pid)


#: The bad inputs of `hat pack`; plugins append rows of their own.
BAD_PACK_INPUTS: list[BadPackInput] = [
    # item 1: a re-pack that fails keeps the old pack
    BadPackInput(
        "overwrite-then-bad-record",
        add_bad_record,
        ("bad source record", "001.txt:5", "--skip-bad"),
        args=("--overwrite",),
    ),
    # items 1 and 14: a full disk while re-packing
    BadPackInput(
        "overwrite-disk-full-eio",
        _failing_writes(lmdb.Error("mdb_txn_commit: Input/output error")),
        ("disk is full", "Input/output error", ".train_lmdb.partial/data.mdb", "free space", "left as it was"),
        args=("--overwrite",),
    ),
    BadPackInput(
        "overwrite-disk-full-enospc",
        _failing_writes(OSError(errno.ENOSPC, "No space left on device")),
        ("disk is full", "no space left", ".train_lmdb.partial/data.mdb", "free space"),
        args=("--overwrite",),
    ),
    BadPackInput(
        "fresh-disk-full",
        no_pack_then(_failing_writes(lmdb.Error("mdb_txn_commit: Input/output error"))),
        ("disk is full", "{data_mdb}", "free space"),
        leaves="nothing",
    ),
    # item 2: another run is writing this destination
    BadPackInput(
        "locked-by-another-run",
        locked_by_another_run,
        ("another `hat pack` is writing", "{pack}", "pid {pid}", "packers_for_tests", "another --dst"),
        leaves="as set up",
    ),
    BadPackInput(
        "locked-by-another-run-overwrite",
        locked_by_another_run,
        ("another `hat pack` is writing", "pid {pid}", "packers_for_tests"),
        args=("--overwrite",),
        leaves="as set up",
    ),
    # item 3: a pack that cannot be read is not incomplete
    BadPackInput(
        "unreadable-pack",
        unreadable,
        ("cannot be read as a pack", "Permission denied", "{data_mdb}", "left untouched", "--overwrite"),
    ),
    BadPackInput(
        "data-mdb-not-lmdb",
        not_lmdb,
        ("not an LMDB data file", "{data_mdb}", "left untouched", "--overwrite"),
        leaves="as set up",
    ),
    # item 5: a truncated data.mdb (SIGBUS before the fix)
    BadPackInput(
        "truncated-data-mdb",
        truncated,
        ("truncated", "8192 bytes", "20480", "{data_mdb}", "--overwrite"),
        leaves="as set up",
        isolated=True,
    ),
    # item 11: LMDB files that other tools wrote
    BadPackInput(
        "pickle-lmdb-with-meta",
        pickle_lmdb_with_meta,
        ("not a HAT pack", "pickle", "{data_mdb}", "--overwrite"),
        leaves="as set up",
    ),
    BadPackInput(
        "pickle-lmdb-other-keys",
        pickle_lmdb_other_keys,
        ("not a HAT pack", "img_0", "{data_mdb}", "--overwrite"),
        leaves="as set up",
    ),
]


# -- the table's runner ---------------------------------------------------------------------
def hat_pack(ctx: Ctx, *extra: str, isolated: bool = False) -> tuple[int, str]:
    args = ["pack", "toyset", "--src", str(ctx.raw), "--dst", str(ctx.data), "--split", "train", *extra]
    if not isolated:
        code, out, err = run_cli(*args)
        return code, out + err
    done = subprocess.run(
        [sys.executable, "-c", ISOLATED_HAT, *args, "--quiet"],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())} if path.is_dir() else {}


@pytest.fixture()
def session(tmp_path: Path, toy_host: PluginHost, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ctx]:
    """`hat synth toyset --dst raw` then `hat pack toyset --src raw --dst data --split train`."""
    ctx = Ctx(tmp_path, tmp_path / "raw", tmp_path / "data", monkeypatch)
    assert run_cli("synth", "toyset", "--dst", str(ctx.raw)).code == 0
    code, out, err = run_cli("pack", "toyset", "--src", str(ctx.raw), "--dst", str(ctx.data), "--split", "train")
    assert code == 0, out + err
    # Each `hat` the user types is a new process: forget the mapping this one keeps of the pack.
    pack_module._drop_reader_env(ctx.pack)
    yield ctx
    for cleanup in ctx.cleanups:
        cleanup()
    pack_module._drop_reader_env(ctx.pack) if ctx.data_mdb.is_file() else None


@pytest.mark.parametrize("case", BAD_PACK_INPUTS, ids=lambda c: c.id)
def test_hat_pack_bad_input(session: Ctx, case: BadPackInput) -> None:
    ctx = session
    old = snapshot(ctx.pack)
    case.setup(ctx)
    before = snapshot(ctx.pack)
    code, output = hat_pack(ctx, *case.args, isolated=case.isolated)
    assert code == 2, f"exit {code}:\n{output}"
    assert "Traceback" not in output and "error:" in output and "next:" in output, output
    names = {"pack": str(ctx.pack), "data_mdb": str(ctx.data_mdb), **ctx.names}
    flat = " ".join(output.split())  # rich may wrap long lines
    for fragment in case.says:
        assert fragment.format(**names) in flat, f"{fragment!r} not in:\n{output}"
    for cleanup in ctx.cleanups:  # e.g. stop the other run before looking at the disk
        cleanup()
    ctx.cleanups.clear()
    ctx.monkeypatch.undo()  # look at the disk with the real LMDB
    if case.leaves == "old pack":
        assert snapshot(ctx.pack) == old
        assert len(PackReader(ctx.pack)) == NUM_SAMPLES
    elif case.leaves == "as set up":
        assert snapshot(ctx.pack) == before
    else:
        assert not ctx.pack.exists()
    assert not (ctx.data / ".train_lmdb.partial").exists()


# -- what the refusals point to works ---------------------------------------------------------
@pytest.mark.parametrize(
    ("setup", "isolated"),  # a truncated pack in a subprocess: a SIGBUS would end the test session
    [(not_lmdb, False), (truncated, True), (pickle_lmdb_with_meta, False), (pickle_lmdb_other_keys, False)],
)
def test_overwrite_replaces_what_cannot_be_read(session: Ctx, setup: Callable[[Ctx], None], isolated: bool) -> None:
    setup(session)
    code, output = hat_pack(session, "--overwrite", isolated=isolated)
    assert code == 0, output
    assert len(PackReader(session.pack)) == NUM_SAMPLES
    assert sorted(os.listdir(session.data)) == [".train_lmdb.lock", "train_lmdb"]  # nothing left beside it


def test_overwrite_swaps_in_the_new_pack(session: Ctx) -> None:
    (session.raw / "train" / "002.txt").unlink()
    code, output = hat_pack(session, "--overwrite")
    assert code == 0 and "packed 8 samples" in output, output
    assert len(PackReader(session.pack)) == 8
    assert sorted(os.listdir(session.data)) == [".train_lmdb.lock", "train_lmdb"]


def test_a_dead_runs_lock_file_does_not_block(session: Ctx) -> None:
    """flock dies with its holder: the file a killed run left (its pid inside) is no lock."""
    lock = session.data / ".train_lmdb.lock"
    lock.write_text('{"pid": 999999, "host": "gone", "command": "hat pack toyset"}')
    code, output = hat_pack(session, "--overwrite")
    assert code == 0, output
    assert str(os.getpid()) in lock.read_text()  # the holder it names is this run now


def test_incomplete_pack_is_still_replaced_unasked(session: Ctx) -> None:
    """Only a readable pack without __meta__ is incomplete; that one is replaced without --overwrite."""
    shutil.rmtree(session.pack)
    env = lmdb.open(str(session.pack), map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", b"\x80")  # a sample key, no __meta__: its writer died
    env.close()
    code, output = hat_pack(session)
    assert code == 0, output
    assert len(PackReader(session.pack)) == NUM_SAMPLES


# -- the same packs read by training (PackReader / PackedDataset, what `hat train` opens) ----
def test_reading_a_truncated_pack_is_an_error_not_sigbus(session: Ctx) -> None:
    truncated(session)
    code = (
        "import sys\nfrom hat.data.dataset import PackedDataset\nfrom hat.errors import UserError\n"
        "try:\n    PackedDataset(sys.argv[1])\nexcept UserError as e:\n    print(e.render()); sys.exit(2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(session.pack)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "truncated" in done.stdout and str(session.data_mdb) in done.stdout and "--overwrite" in done.stdout


def test_reading_a_pickle_lmdb_says_it_is_not_a_hat_pack(session: Ctx) -> None:
    pickle_lmdb_with_meta(session)
    with pytest.raises(UserError, match="not a HAT pack") as info:
        PackedDataset(str(session.pack))
    assert str(session.data_mdb) in str(info.value) and "hat pack" in str(info.value)


def test_reading_a_foreign_lmdb_without_meta_says_it_is_not_a_hat_pack(session: Ctx) -> None:
    """Not "incomplete, re-run hat pack": hat pack would refuse this LMDB without --overwrite."""
    pickle_lmdb_other_keys(session)
    with pytest.raises(UserError) as info:
        PackedDataset(str(session.pack))
    text = str(info.value)
    assert "not a HAT pack" in text and "b'img_0'" in text and "incomplete" not in text
    assert f"where: {session.data_mdb}" in text and "--overwrite" in text and "data_path" in text
    code, output = hat_pack(session)  # and hat pack, as the hint says, leaves it without --overwrite
    assert code == 2 and "not a HAT pack" in output


def test_reading_a_sample_that_is_not_msgpack_names_the_sample(tmp_path: Path) -> None:
    path = tmp_path / "train_lmdb"
    with PackWriter(path) as writer:
        writer.write({"a": 1})
        writer.write_encoded(pickle.dumps({"a": 2}))
        writer.finish({"dataset": "toy", "split": "train", "source": "memory"})
    reader = PackReader(path)
    with pytest.raises(UserError, match="sample 1 of pack") as info:
        reader[1]
    assert str(path) in str(info.value) and "--overwrite" in str(info.value)


class NeedsImage(PackedDataset):
    def decode(self, sample: dict) -> dict:
        return {**sample, "image": self.decode_image(sample["image"])}


def test_a_sample_missing_a_key_names_pack_index_and_key(tmp_path: Path) -> None:
    path = tmp_path / "train_lmdb"
    with PackWriter(path) as writer:
        writer.write({"points": [1, 2]})
        writer.finish({"dataset": "toy", "split": "train", "source": "memory"})
    with pytest.raises(UserError) as info:
        NeedsImage(str(path))[0]
    text = str(info.value)
    assert "sample 0" in text and str(path) in text and "'image'" in text and "hat pack" in text


def test_two_writers_in_one_process_conflict_too(tmp_path: Path) -> None:
    with PackWriter(tmp_path / "train_lmdb"), pytest.raises(UserError, match=f"pid {os.getpid()}"):
        PackWriter(tmp_path / "train_lmdb", overwrite=True)
    with PackWriter(tmp_path / "train_lmdb") as again:  # released on leaving the block
        again.write({"a": 1})
        again.finish({"dataset": "toy", "split": "train", "source": "memory"})
    assert len(PackReader(tmp_path / "train_lmdb")) == 1


def test_kill_signal_is_not_needed_for_the_lock_to_go(tmp_path: Path) -> None:
    """A SIGKILLed holder's lock is released by the kernel: the next writer gets it."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "records.txt").write_text("".join(f"{i}\n" for i in range(50)))
    marker = tmp_path / "stalled"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.core.packers_for_tests",
            "stall",
            str(src),
            str(tmp_path / "dst"),
            "30",
            str(marker),
        ],
        cwd=REPO,
        env=ENV,
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(UserError, match="another `hat pack`"):
            PackWriter(tmp_path / "dst" / "train_lmdb")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    with PackWriter(tmp_path / "dst" / "train_lmdb") as writer:  # its incomplete pack is replaced
        writer.write({"a": 1})
        writer.finish({"dataset": "toy", "split": "train", "source": "memory"})
    assert len(PackReader(tmp_path / "dst" / "train_lmdb")) == 1
