"""Samples to bytes and back with msgpack — never pickle.

A packed dataset may come from someone else; unpickling it could run their code. msgpack
only ever produces plain data, so reading a pack is safe whatever its origin.

What a sample may hold: dicts, lists, tuples (they come back as lists), str, int, float,
bool, None, bytes, numpy scalars (they come back as Python scalars) and numpy arrays.
Encoded images are plain ``bytes`` — the original JPEG/PNG file, never re-encoded, so
packing loses nothing and costs no extra compression.

Arrays travel as a msgpack extension (code :data:`NDARRAY_EXT`) whose payload is itself
msgpack: ``[dtype.str, shape, raw C-order bytes]``. ``dtype.str`` carries the byte
order, so a round trip is bit-identical for every dtype, shape, 0-d and empty arrays.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

#: msgpack extension type code of a numpy array.
NDARRAY_EXT = 1

#: dtype kinds that cannot be stored as raw bytes: Python objects, structured/void.
_REFUSED_KINDS = {"O": "object", "V": "structured/void"}


def encode(obj: Any) -> bytes:
    """Encode a sample. Raises TypeError naming the key path of anything unsupported."""
    try:
        return msgpack.packb(obj, default=_default, use_bin_type=True)
    except (TypeError, OverflowError, ValueError) as exc:
        # msgpack's fast path does not know where it was; walk again to name the key.
        path, bad = _find_unsupported(obj, "")
        if bad is None:
            raise
        raise TypeError(f"cannot encode {_describe(bad)} at {path or '<root>'}: {_why(bad)}") from exc


def decode(data: bytes) -> Any:
    """Decode what :func:`encode` produced; arrays come back writable and C-contiguous."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)


def _default(obj: Any) -> Any:
    """msgpack's hook for types it does not know natively."""
    if isinstance(obj, np.ndarray):
        kind = obj.dtype.kind
        if kind in _REFUSED_KINDS:
            raise TypeError(f"{_REFUSED_KINDS[kind]} arrays cannot be encoded")
        # Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.
        arr = obj if obj.flags.c_contiguous else obj.copy(order="C")
        payload = msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()], use_bin_type=True)
        return msgpack.ExtType(NDARRAY_EXT, payload)
    if isinstance(obj, np.generic):
        value = obj.item()
        if isinstance(value, (bool, int, float, str, bytes)):
            return value
        raise TypeError(f"numpy scalar of dtype {obj.dtype} has no plain Python equivalent")
    if isinstance(obj, (bytearray, memoryview)):
        return bytes(obj)
    raise TypeError(f"type {type(obj).__name__} cannot be encoded")


def _ext_hook(code: int, payload: bytes) -> Any:
    if code != NDARRAY_EXT:
        raise ValueError(f"unknown msgpack extension type {code} in packed data (made by a newer hat?)")
    dtype_str, shape, raw = msgpack.unpackb(payload, raw=False)
    dtype = np.dtype(dtype_str)
    # A bytearray copy makes the array writable: torch.from_numpy warns on read-only arrays.
    return np.frombuffer(bytearray(raw), dtype=dtype).reshape(tuple(shape))


def _find_unsupported(obj: Any, path: str) -> tuple[str, Any]:
    """The key path and value of the first thing :func:`encode` cannot handle."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int, float, bool, bytes)) and key is not None:
                return _join(path, repr(key)), key
            found = _find_unsupported(value, _join(path, str(key)))
            if found[1] is not None:
                return found
        return path, None
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found = _find_unsupported(value, _join(path, str(i)))
            if found[1] is not None:
                return found
        return path, None
    if isinstance(obj, int) and not isinstance(obj, bool) and not -(2**63) <= obj < 2**64:
        return path, obj
    if obj is None or isinstance(obj, (str, int, float, bool, bytes, bytearray, memoryview)):
        return path, None
    try:
        _default(obj)
    except TypeError:
        return path, obj
    return path, None


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"numpy array of dtype {value.dtype}"
    return f"value of type {type(value).__name__}"


def _why(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return "object and structured arrays cannot be stored as raw bytes; convert to a numeric dtype or a list"
    if isinstance(value, int):
        return "integers must fit in 64 bits"
    return "samples may only hold dict, list, tuple, str, int, float, bool, None, bytes and numpy arrays/scalars"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
