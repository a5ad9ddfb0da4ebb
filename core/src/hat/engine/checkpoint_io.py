"""Reading and writing checkpoints: atomic, data only, with clear errors.

A checkpoint is written to a temporary file in the same directory and renamed over the
old one, so a crash mid-save never leaves a truncated file where a good one was; the
directory is fsynced after the rename, so the new name survives a power loss too. A save
killed mid-write leaves its temp file behind (``.<name>.tmp-<pid>``); the next run removes
those of dead processes (:func:`remove_stale_temp_files`). It is
read with ``torch.load(weights_only=True)``: a checkpoint is data, never code, so
everything in it is tensors, numbers, strings, lists and dicts (RNG states included).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat.errors import UserError

FORMAT = "hat-checkpoint"
FORMAT_VERSION = 1


#: ``.<checkpoint name>.tmp-<pid>``: what :func:`save_checkpoint` writes before the rename.
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")
#: errnos that mean "no room left", whichever way the file system says it.
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where ``save_checkpoint(path)`` writes before renaming (one name per process)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename + fsync of the directory).

    A full disk is a UserError naming the file: torch reports it as an opaque
    "enforce fail at inline_container.cc" RuntimeError, or as ``OSError(ENOSPC)``, and
    the user needs to know which file and that the previous one is intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise _disk_full(path, exc) from exc
        raise
    except RuntimeError as exc:  # torch's zip writer: "PytorchStreamWriter failed writing file ..."
        if _is_stream_write_failure(exc) and _free_bytes(path.parent) < _DISK_FULL_BELOW:
            raise _disk_full(path, exc) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


#: A stream-writer failure with less than this free on the disk is reported as a full disk.
_DISK_FULL_BELOW = 64 * 1024 * 1024


def _is_stream_write_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return "inline_container" in text or "PytorchStreamWriter failed" in text or "file write failed" in text


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def _disk_full(path: Path, exc: BaseException) -> UserError:
    free = _free_bytes(path.parent)
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UserError(
        f"cannot write checkpoint {path}: the disk is full ({free / 2**20:.0f} MiB free on {path.parent}; {first})",
        where=str(path),
        hint=f"free space on {path.parent} or use a --work-dir on a larger disk; the previous {path.name}, "
        "if any, is unchanged, so `--resume` continues from it",
    )


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno in _NO_SPACE:
            raise
        # some file systems refuse fsync on a directory (EINVAL): the rename itself is done
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell: keep its file
    return True


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Remove temp files of killed checkpoint saves in ``directory``; return what was removed.

    A save killed mid-write leaves ``.<name>.tmp-<pid>`` (up to a whole checkpoint) that
    nothing else would remove. A file is stale when its process is gone, or when it is
    this process's own (called before this process saves anything, so it is from an
    earlier run that reused the pid or ran in this process). Another live process's file
    is never touched: it may be saving right now.
    """
    directory = Path(directory)
    removed: list[Path] = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file():
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        try:
            entry.unlink()
        except FileNotFoundError:
            continue
        except OSError:
            continue  # not ours to remove (permissions): leave it
        removed.append(entry)
    return removed


def load_checkpoint(path: Path, *, made_by: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely; missing, corrupt or foreign files are a UserError.

    ``made_by`` is the command that makes the file, named in the error when it is missing.
    A plain state dict (e.g. pretrained weights from elsewhere) comes back as
    ``{"model": state_dict}`` so LoadCheckpoint can use it.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"checkpoint not found: {path}",
            hint=f"run `{made_by}` first" if made_by else "check the path",
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as exc:  # EACCES: the file is fine, this user may not read it
        raise UserError(
            f"cannot read checkpoint {path}: permission denied",
            where=str(path),
            hint=f"give this user read access (e.g. `chmod u+r {path}`) or run as the user that wrote it",
        ) from exc
    # Anything else is the content: pickle errors, a truncated zip (torch raises OSError
    # EINVAL for some), code that weights_only refuses.
    except Exception as exc:
        raise UserError(
            f"cannot read checkpoint {path}: it is corrupt or not a plain-data checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            hint="re-create it"
            + (f" with `{made_by}`" if made_by else "")
            + "; HAT never loads code from a checkpoint",
        ) from exc
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"checkpoint {path} was written by a newer HAT", hint="upgrade hat-core")
        return payload
    if isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        return {"model": payload}
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        return {"model": payload["state_dict"]}
    raise UserError(
        f"{path} is not a HAT checkpoint or a state dict (found {type(payload).__name__})",
        hint="pass a checkpoint written by `hat train`, or a torch state dict",
    )


# -- RNG state as plain data ----------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch RNG states as tensors and lists (weights_only-loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
