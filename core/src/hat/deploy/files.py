"""Deploy artifacts on disk: written atomically, and checked before they are read.

Exported and compiled models, ``export.json`` and the perf report are read by later
commands; a crash mid-write must not leave a truncated file that looks complete, and
a model put in ``export/`` by anything but `hat export` must not be taken for the one
``export.json`` describes (:func:`verified_export`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from hat.errors import UserError
from hat.workdir import EXPORT_INFO


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file in the same folder and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


# -- what export wrote, checked before use ---------------------------------------------------

#: Key of ``export.json`` that records each written model: ``{file name: {sha256, bytes, inputs, outputs}}``.
RECORDED_FILES = "files"


def sha256_of(path: Path) -> str:
    """The file's SHA-256, read in blocks (models can be hundreds of megabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def graph_io(path: Path) -> tuple[list[str], list[str]] | None:
    """The names of an ONNX file's graph inputs (initializers excluded) and outputs; None if unreadable."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # anything that is not a readable ONNX file: the caller says it does not match
        return None
    initializers = {t.name for t in graph.initializer}
    return [v.name for v in graph.input if v.name not in initializers], [v.name for v in graph.output]


def file_record(path: Path) -> dict[str, Any]:
    """What ``export.json`` records of a model it wrote, for :func:`verified_export` to check."""
    inputs, outputs = graph_io(path) or ([], [])
    return {"sha256": sha256_of(path), "bytes": Path(path).stat().st_size, "inputs": inputs, "outputs": outputs}


def read_export_info(info_path: Path, *, remedy: str) -> dict[str, Any]:
    """``export.json``, parsed; unreadable or not a JSON object is a UserError naming it.

    ``remedy`` is the command that writes it again (``hat export TASK --work-dir W``).
    """
    info_path = Path(info_path)
    try:
        data = json.loads(info_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{info_path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): "
            "it is corrupt or was cut short",
            where=str(info_path),
            hint=f"re-run `{remedy}` to write it again",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UserError(
            f"cannot read {info_path}: {reason}", where=str(info_path), hint=f"re-run `{remedy}` to write it again"
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"{info_path} is not what `hat export` writes (a JSON {type(data).__name__}, not an object)",
            where=str(info_path),
            hint=f"re-run `{remedy}` to write it again",
        )
    return data


def verified_export(model_path: Path, *, remedy: str, required: bool = True) -> dict[str, Any] | None:
    """Check that ``model_path`` is the model `hat export` wrote beside its ``export.json``.

    Every command that reads an exported model (compile, check, validate, ``predict
    --stage int_infer``, infer) calls this first: a model copied over ``export/model.onnx``
    (another task's, a hand-made one, a half-copied one) would otherwise be compiled,
    measured and reported as this task's (a "40x speed-up" of a one-Relu graph) or fail
    deep inside onnxruntime. The SHA-256 recorded at export is compared with the file's;
    a mismatch is a UserError naming the file, what its graph is, and ``remedy``.

    Returns the parsed ``export.json``. ``required=False``: a model with no ``export.json``
    beside it (a ``model_path`` a config points at outside any export) returns None
    unchecked, since there is nothing to check it against.
    """
    model_path = Path(model_path)
    info_path = model_path.parent / EXPORT_INFO
    if not model_path.is_file() or (required and not info_path.is_file()):
        missing = model_path if not model_path.is_file() else info_path
        raise UserError(f"no exported model: {missing} does not exist", hint=f"run `{remedy}` first")
    if not info_path.is_file():
        return None
    info = read_export_info(info_path, remedy=remedy)
    files = info.get(RECORDED_FILES)
    if not isinstance(files, dict):
        raise UserError(
            f"{info_path} records no hash of the exported models (written by an older HAT), so {model_path} "
            "cannot be checked to be the model it describes",
            where=str(info_path),
            hint=f"re-run `{remedy}`",
        )
    record = files.get(model_path.name)
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise UserError(
            f"{info_path} records no model {model_path.name} (it records {', '.join(sorted(files)) or 'none'})",
            where=str(info_path),
            hint=f"re-run `{remedy}`",
        )
    actual = sha256_of(model_path)
    if actual != record["sha256"]:
        raise UserError(
            f"{model_path} is not the model `hat export` wrote: its sha256 {actual[:12]}... differs from the "
            f"{record['sha256'][:12]}... recorded in {info_path}; {_describe_difference(model_path, record)}",
            where=str(model_path),
            hint=f"re-run `{remedy}` to export this task's model again (or put back the file it wrote)",
        )
    return info


def _describe_difference(path: Path, record: dict[str, Any]) -> str:
    """What the file on disk is, next to what export recorded (the graph's inputs and outputs)."""
    wrote = (
        f"export wrote {record.get('bytes', '?')} bytes with inputs {record.get('inputs')} "
        f"-> outputs {record.get('outputs')}"
    )
    found = graph_io(path)
    if found is None:
        return f"the file is {path.stat().st_size} bytes and not readable as ONNX; {wrote}"
    return f"the file is {path.stat().st_size} bytes with inputs {found[0]} -> outputs {found[1]}; {wrote}"
