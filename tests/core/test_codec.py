"""The sample codec: bit-identical round trips, plain data only, clear refusals."""

from __future__ import annotations

import pickle
import sys

import cv2
import msgpack
import numpy as np
import pytest

from hat.data import codec

ARRAYS = {
    "uint8": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    "int8": np.array([-128, -1, 0, 127], dtype=np.int8),
    "int16": np.array([[-32768, 5], [7, 32767]], dtype=np.int16),
    "uint16": np.array([0, 65535], dtype=np.uint16),
    "int32": np.arange(-5, 5, dtype=np.int32),
    "int64": np.array([-(2**63), 2**63 - 1], dtype=np.int64),
    "uint64": np.array([2**64 - 1], dtype=np.uint64),
    "float16": np.array([0.1, -np.inf, 65504.0], dtype=np.float16),
    "float32": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
    "float64": np.array([np.pi, np.nan, -0.0, 1e-308]),
    "bool": np.array([[True, False], [False, True]]),
    "complex64": np.array([1 + 2j, -3j], dtype=np.complex64),
    "big_endian_f4": np.arange(5, dtype=">f4"),
    "unicode": np.array(["ab", "cde"]),
    "zero_d": np.array(3.25),
    "zero_d_int": np.array(7, dtype=np.int16),
    "empty": np.zeros((0,), dtype=np.float32),
    "empty_2d": np.zeros((3, 0, 2), dtype=np.int64),
    "strided": np.arange(20, dtype=np.int32)[::3],
    "fortran": np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    "transposed": np.arange(24, dtype=np.uint8).reshape(4, 6).T,
}


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_array_round_trip_is_bit_identical(name: str) -> None:
    original = ARRAYS[name]
    back = codec.decode(codec.encode({"a": original}))["a"]
    assert isinstance(back, np.ndarray)
    assert back.dtype == original.dtype
    assert back.dtype.str == original.dtype.str  # byte order kept too
    assert back.shape == original.shape
    assert back.tobytes() == np.ascontiguousarray(original).tobytes()
    assert back.flags.c_contiguous
    assert back.flags.writeable  # torch.from_numpy must not warn


def test_encoded_images_come_back_byte_for_byte() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    jpg = cv2.imencode(".jpg", image)[1].tobytes()
    png = cv2.imencode(".png", image)[1].tobytes()
    back = codec.decode(codec.encode({"jpg": jpg, "png": png}))
    assert back["jpg"] == jpg and isinstance(back["jpg"], bytes)
    assert back["png"] == png
    assert np.array_equal(cv2.imdecode(np.frombuffer(back["png"], np.uint8), cv2.IMREAD_COLOR), image)


def test_plain_values_numpy_scalars_and_tuples() -> None:
    sample = {
        "s": "text",
        "i": -3,
        "big": 2**64 - 1,
        "f": 0.5,
        "t": True,
        "n": None,
        "nested": {"list": [1, [2, 3]], "tuple": (1, "a", (2.5,))},
        "np_f32": np.float32(1.5),
        "np_i64": np.int64(-9),
        "np_bool": np.bool_(True),
        7: "int key",
    }
    back = codec.decode(codec.encode(sample))
    assert back["nested"]["tuple"] == [1, "a", [2.5]]
    assert back["np_f32"] == 1.5 and type(back["np_f32"]) is float
    assert back["np_i64"] == -9 and type(back["np_i64"]) is int
    assert back["np_bool"] is True
    assert back[7] == "int key"
    assert back["big"] == 2**64 - 1
    assert {k: back[k] for k in ("s", "i", "f", "t", "n")} == {"s": "text", "i": -3, "f": 0.5, "t": True, "n": None}


def test_object_arrays_are_refused_naming_the_key() -> None:
    with pytest.raises(TypeError, match=r"dtype object at boxes\.1\.labels"):
        codec.encode({"boxes": [{}, {"labels": np.array(["a", None], dtype=object)}]})


def test_structured_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match="at rec"):
        codec.encode({"rec": np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])})


def test_unknown_types_are_refused_naming_type_and_key() -> None:
    class Box:
        pass

    with pytest.raises(TypeError, match=r"type Box at anno\.0"):
        codec.encode({"anno": [Box()]})
    with pytest.raises(TypeError, match=r"set at ids"):
        codec.encode({"ids": {1, 2}})
    with pytest.raises(TypeError, match="64 bits"):
        codec.encode({"huge": 2**70})


def test_unknown_extension_is_refused() -> None:
    data = msgpack.packb(msgpack.ExtType(42, b"xyz"))
    with pytest.raises(ValueError, match="extension type 42"):
        codec.decode(data)


_pickle_events: list[str] = []


def _record_pickle_events(event: str, args: tuple) -> None:
    if event.startswith("pickle."):
        _pickle_events.append(event)


def test_decoding_never_touches_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    sys.addaudithook(_record_pickle_events)  # hooks cannot be removed; this one only records

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while decoding")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    data = codec.encode({**{f"a{i}": a for i, a in enumerate(ARRAYS.values())}, "x": (1, np.float64(2))})
    _pickle_events.clear()
    back = codec.decode(data)
    assert len(back) == len(ARRAYS) + 1
    assert _pickle_events == []
    for marker in (b"\x80\x04\x95", b"\x80\x05\x95", b"cnumpy", b"c__builtin__"):
        assert marker not in data
