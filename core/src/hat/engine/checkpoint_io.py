"""Reading and writing checkpoints: atomic, data only, with clear errors.

A checkpoint is written to a temporary file in the same directory and renamed over the
old one, so a crash mid-save never leaves a truncated file where a good one was. It is
read with ``torch.load(weights_only=True)``: a checkpoint is data, never code, so
everything in it is tensors, numbers, strings, lists and dicts (RNG states included).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hat.errors import UserError

FORMAT = "hat-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    except Exception as exc:  # pickle errors, truncated zip, code that weights_only refuses
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
