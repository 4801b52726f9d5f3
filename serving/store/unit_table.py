"""A rollout's per-unit aggregates as columns (UnitTable), and how the store reads them.

One row per (variant, step, unit): the unit's counted requests, errors, requests over the TTFT
threshold and its scores at that step on that variant (records.UnitStats says what each holds).
A rollout at scale has hundreds of thousands of these rows, so they travel and live as numpy
arrays, never as one Python object per row:

- PostgreSQL: the per-unit GROUP BY (logs.units_query and its kin) is grouped once more per
  (variant, step), each column collected with array_agg and sent in the array's binary form
  (array_send); a handful of rows come back, each column is read with one np.frombuffer.
- SQLite (the embedded default, small by design), or PostgreSQL through a driver other than
  psycopg 3: the per-unit rows are fetched and turned into columns.

Variants and units come back as sorted names and integer codes into them (`variants`, `units`),
so a unit seen at several steps or on both variants has one code.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from serving.store.records import UnitStats

I64 = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class UnitTable:
    """Per (variant, step, unit) aggregates, one array per field, all of one length (the rows).
    `variant` and `unit` are codes into the sorted names `variants` and `units` (units as UTF-8
    bytes: a quarter of numpy's str). Iterating gives UnitStats (for tests and people; the report
    reads the columns)."""

    variants: tuple[str, ...]
    units: NDArray[np.bytes_]
    variant: I64
    step: I64
    unit: I64
    requests: I64
    errors: I64
    ttft_over: I64
    score_sum: NDArray[np.float64]
    score_n: I64

    @classmethod
    def from_columns(
        cls,
        variant: Any,
        step: Any,
        unit: Any,
        requests: Any,
        errors: Any,
        ttft_over: Any,
        score_sum: Any,
        score_n: Any,
    ) -> UnitTable:
        """A table from one value per row of each field; names (str or UTF-8 bytes) are coded here."""
        variants, variant_code = codes_of(np.asarray(variant))
        units, unit_code = codes_of(_as_bytes(np.asarray(unit)))

        def ints(values: Any) -> I64:
            return np.asarray(values, dtype=np.int64)

        return cls(
            variants=tuple(_as_str(variants).tolist()),
            units=units,
            variant=variant_code,
            step=ints(step),
            unit=unit_code,
            requests=ints(requests),
            errors=ints(errors),
            ttft_over=ints(ttft_over),
            score_sum=np.asarray(score_sum, dtype=np.float64),
            score_n=ints(score_n),
        )

    @classmethod
    def of(cls, rows: Iterable[UnitStats]) -> UnitTable:
        """The table of some UnitStats (tests, replays): the same rows as columns."""
        columns = list(zip(*rows, strict=True)) or [()] * len(UnitStats._fields)
        return cls.from_columns(*columns)

    @classmethod
    def empty(cls) -> UnitTable:
        return cls.of([])

    def __len__(self) -> int:
        return len(self.step)

    def __iter__(self) -> Iterator[UnitStats]:
        variants, units = self.variants, _as_str(self.units).tolist()
        columns = (self.variant, self.step, self.unit, self.requests, self.errors, self.ttft_over)
        v, st, u, n, e, o = (c.tolist() for c in columns)
        t, k = self.score_sum.tolist(), self.score_n.tolist()
        for i in range(len(self)):
            yield UnitStats(variants[v[i]], st[i], units[u[i]], n[i], e[i], o[i], t[i], k[i])

    def is_variant(self, name: str) -> NDArray[np.bool_]:
        """Per row: is it of variant `name`."""
        code = self.variants.index(name) if name in self.variants else -1
        return self.variant == code

    def unit_codes(self, names: Sequence[str]) -> I64:
        """The code of each unit name, -1 for a unit this table does not hold."""
        if not len(self.units) or not len(names):
            return np.full(len(names), -1, dtype=np.int64)
        wanted = _as_bytes(np.asarray(names, dtype=str))
        at = np.minimum(np.searchsorted(self.units, wanted), len(self.units) - 1)
        return np.where(self.units[at] == wanted, at, -1).astype(np.int64)

    def units_with_requests(self, rows: NDArray[np.bool_] | None = None) -> int:
        """How many distinct units have at least one request (in `rows`, or in the whole table)."""
        seen = np.zeros(len(self.units), dtype=bool)
        seen[self.unit[(self.requests > 0) if rows is None else (self.requests > 0) & rows]] = True
        return int(seen.sum())


def codes_of(values: NDArray) -> tuple[NDArray, I64]:
    """(sorted distinct values, each value's index into them): np.unique's return_inverse, with a
    stable sort, which is fast on the store's output (already sorted within each variant and step)."""
    if values.size == 0:
        return values[:0], np.zeros(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.empty(len(values), dtype=bool)
    first[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=first[1:])
    codes = np.empty(len(values), dtype=np.int64)
    codes[order] = np.cumsum(first) - 1
    return ordered[first], codes


def _as_bytes(names: NDArray) -> NDArray[np.bytes_]:
    """Names as UTF-8 bytes (PostgreSQL's text arrays arrive so; str from SQLite and tests)."""
    if names.dtype.kind == "S":
        return names
    return np.char.encode(names.astype(str), "utf-8") if names.size else np.array([], dtype="S1")


def _as_str(names: NDArray) -> NDArray[np.str_]:
    """Names as a str array (bytes from PostgreSQL are UTF-8)."""
    if names.dtype.kind != "S":
        return names.astype(str) if names.size else np.array([], dtype=str)
    try:
        return names.astype(str)  # ASCII, the common case (units are hex digests): fast
    except UnicodeDecodeError:
        return np.char.decode(names, "utf-8")


# --- reading -------------------------------------------------------------------------------------


def read_unit_table(session: Session, query: sa.Select) -> UnitTable:
    """The UnitTable of `query`: per-unit rows (variant, step, unit, requests, errors, ttft_over,
    score_sum, score_n), sorted by (variant, step, unit) -- logs.units_query and its kin."""
    conn = session.connection()
    if (conn.dialect.name, conn.dialect.driver) != ("postgresql", "psycopg"):  # SQLite (or another driver)
        rows = session.execute(query).all()
        return UnitTable.of(UnitStats(*row) for row in rows)  # type: ignore[arg-type]
    names, steps, sizes = [], [], []
    parts: list[list[NDArray]] = [[] for _ in range(6)]  # unit, requests, errors, ttft_over, score_sum, score_n
    for variant, step, unit, *numbers in _groups(conn, grouped_query(query)):
        parts[0].append(_text_array(unit))
        for part, data, dtype in zip(parts[1:], numbers, (">i8", ">i8", ">i8", ">f8", ">i8"), strict=True):
            part.append(_number_array(data, dtype))
        names.append(variant)
        steps.append(step)
        sizes.append(len(parts[0][-1]))
        del unit, numbers  # this group's bytes: the next group is fetched after
    if not names:
        return UnitTable.empty()
    variants, group_variant = codes_of(np.array(names))
    columns = [np.concatenate(parts.pop(0)) for _ in range(len(parts))]  # each list freed as it goes
    units, unit_code = codes_of(columns[0])
    return UnitTable(
        tuple(variants.tolist()),
        units,
        np.repeat(group_variant, sizes),
        np.repeat(np.array(steps, dtype=np.int64), sizes),
        unit_code,
        *columns[1:],
    )


def grouped_query(query: sa.Select) -> sa.Select:
    """`query`'s per-unit rows collected per (variant, step): one row per group, each other column
    as the binary form of its array (array_send). The rows' own ORDER BY (variant, step, unit)
    lets PostgreSQL group them as they come, without another sort."""
    cells = query.subquery()
    variant, step, unit, *numbers = cells.c
    types = (sa.BigInteger, sa.BigInteger, sa.BigInteger, sa.Double, sa.BigInteger)

    def sent(column: Any) -> Any:
        return sa.func.array_send(sa.func.array_agg(column))

    arrays = [sent(sa.cast(sa.func.coalesce(c, 0), t)) for c, t in zip(numbers, types, strict=True)]
    return sa.select(variant, step, sent(unit), *arrays).group_by(variant, step)


def _groups(conn: sa.Connection, query: sa.Select) -> Iterator[tuple[Any, ...]]:
    """The rows of `query`, one at a time, through the driver's own server-side cursor in binary
    format (bytea as raw bytes, not hex), in the session's transaction: only one group's arrays
    are in memory at once. A driver error leaves as SQLAlchemy's DBAPIError (which the store
    translates)."""
    compiled = query.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.cursor(name="loraplane_units", binary=True)  # type: ignore[call-arg]
    try:
        cursor.execute(str(compiled), params)
        while (row := cursor.fetchone()) is not None:
            yield row
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(str(compiled), params, exc, dbapi_error) from exc
    finally:
        cursor.close()


# PostgreSQL's binary array: int32 dimensions, int32 has-nulls, uint32 element type, then per
# dimension int32 length and int32 lower bound; then per element int32 byte length and the bytes.
_HEADER = struct.Struct(">iiI")
_DIMENSION = struct.Struct(">ii")


def _array_length(data: bytes) -> int:
    ndim, _, _ = _HEADER.unpack_from(data)
    return 0 if ndim == 0 else _DIMENSION.unpack_from(data, _HEADER.size)[0]


def _elements_at(data: bytes) -> int:
    ndim = _HEADER.unpack_from(data)[0]
    if ndim > 1:
        raise ValueError(f"expected a one-dimensional array, got {ndim} dimensions")
    return _HEADER.size + ndim * _DIMENSION.size


def _number_array(data: bytes, dtype: str) -> NDArray:
    """A one-dimensional array of fixed-width numbers without NULLs, native byte order."""
    n, at, width = _array_length(data), _elements_at(data), np.dtype(dtype).itemsize
    wrong = ValueError(f"expected {n} non-NULL {width}-byte numbers in the array ({len(data)} bytes)")
    if len(data) != at + n * (4 + width):
        raise wrong
    elements = np.frombuffer(data, np.dtype([("length", ">i4"), ("value", dtype)]), count=n, offset=at)
    if (elements["length"] != width).any():
        raise wrong
    return elements["value"].astype(np.dtype(dtype).newbyteorder("="))


def _text_array(data: bytes) -> NDArray[np.bytes_]:
    """A one-dimensional text array without NULLs as UTF-8 bytes: one np.frombuffer when every
    element has the same length (units: fixed-length digests), else element by element."""
    n, at = _array_length(data), _elements_at(data)
    if n == 0:
        return np.array([], dtype="S1")
    width = struct.unpack_from(">i", data, at)[0]
    if width > 0 and len(data) == at + n * (4 + width):
        elements = np.frombuffer(data, np.dtype([("length", ">i4"), ("text", f"S{width}")]), count=n, offset=at)
        if (elements["length"] == width).all():
            return elements["text"]
    out = []
    for _ in range(n):
        (width,) = struct.unpack_from(">i", data, at)
        if width < 0:
            raise ValueError("expected no NULL in a text array")
        out.append(data[at + 4 : at + 4 + width])
        at += 4 + width
    return np.array(out, dtype=bytes)
