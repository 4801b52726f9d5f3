"""PostgreSQL's binary array form as unit_table.py reads it (what array_send gives): numbers with
one np.frombuffer, text with one np.frombuffer when every element has one length, else element by
element; a NULL or a wrong width is refused, never read as a shifted number."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from serving.store.unit_table import _number_array, _text_array, codes_of

INT8, TEXT = 20, 25  # element type oids


def array_send(oid: int, elements: list[bytes | None]) -> bytes:
    """PostgreSQL's array_send of a one-dimensional array: header, dimension, (length, bytes) each."""
    if not elements:
        return struct.pack(">iiI", 0, 0, oid)
    out = struct.pack(">iiIii", 1, any(e is None for e in elements), oid, len(elements), 1)
    for e in elements:
        out += struct.pack(">i", -1) if e is None else struct.pack(">i", len(e)) + e
    return out


def test_numbers_and_text_of_one_length_or_many() -> None:
    numbers = array_send(INT8, [struct.pack(">q", v) for v in (3, -1, 2**40)])
    assert _number_array(numbers, ">i8").tolist() == [3, -1, 2**40]
    assert _number_array(array_send(INT8, []), ">i8").tolist() == []
    same = [f"{i:032x}".encode() for i in range(5)]
    assert _text_array(array_send(TEXT, same)).tolist() == same  # the one-frombuffer path
    mixed = [b"a", "日本".encode(), b"", b"bb"]
    assert _text_array(array_send(TEXT, mixed)).tolist() == mixed  # element by element


def test_a_null_or_a_wrong_width_is_refused() -> None:
    with pytest.raises(ValueError, match="non-NULL 8-byte"):
        _number_array(array_send(INT8, [struct.pack(">q", 1), None]), ">i8")
    with pytest.raises(ValueError, match="non-NULL 8-byte"):
        _number_array(array_send(INT8, [struct.pack(">i", 1)] * 2), ">i8")
    with pytest.raises(ValueError, match="no NULL"):
        _text_array(array_send(TEXT, [b"a", None]))


def test_codes_of_equals_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    values = np.array([f"u{i}".encode() for i in rng.integers(0, 50, 400)])
    names, codes = codes_of(values)
    expected_names, expected_codes = np.unique(values, return_inverse=True)
    assert names.tolist() == expected_names.tolist() and codes.tolist() == expected_codes.tolist()
