"""Named binary layouts: a structure declared once as (field name, offset, format).

Specifications give every structure as a table of fields at byte offsets; a
:class:`Layout` is that table, written with the specification's field names, and
everything else is derived from it: the precompiled :class:`struct.Struct` (a Layout *is*
one, so existing positional code keeps working), packing and unpacking by name for code
that is not hot, and for the code that runs once per command plain Structs of the whole
layout (:attr:`Layout.plain`) or of a few of its fields (:meth:`Layout.reader`,
:meth:`Layout.span`). The target, the initiator, the shared-memory files and the tests all
read and write bytes through these declarations, so an offset is written in one place.

All layouts are little-endian, as NVMe, NVMe/TCP and our own files are.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

FieldSpec = tuple[str, int, str]    # name, byte offset, struct code ("I", "16s", ...)


def _format(size: int, fields: Sequence[FieldSpec]) -> str:
    """The struct format of ``fields`` laid out in ``size`` bytes; gaps become pad bytes."""
    fmt, pos = "<", 0
    for name, offset, code in fields:
        if offset < pos:
            raise ValueError(f"field {name} at {offset} overlaps the one before it")
        if offset > pos:
            fmt += "x" if offset - pos == 1 else f"{offset - pos}x"
        fmt += code
        pos = offset + struct.calcsize("<" + code)
    if pos > size:
        raise ValueError(f"fields end at {pos}, beyond the layout's {size} bytes")
    if size > pos:
        fmt += "x" if size - pos == 1 else f"{size - pos}x"
    return fmt


def _zero(code: str) -> bytes | int:
    return b"" if code.endswith("s") else 0


class Layout(struct.Struct):
    """A structure of ``size`` bytes whose fields are (name, offset, format), ascending.

    Positional ``pack``/``unpack_from`` are :class:`struct.Struct`'s, in field order;
    :meth:`build`, :meth:`put` and :meth:`get` work by name. A method call on a subclass
    of Struct costs some 20 ns more than on a Struct, so per-command code binds
    :attr:`plain` (the same format, a plain Struct) or a :meth:`reader` once instead."""

    __slots__ = ("_at", "_zeros", "fields", "names", "plain")

    def __new__(cls, size: int, fields: Sequence[FieldSpec]) -> Layout:
        # Struct's constructor takes the format; give it that, not our arguments
        return super().__new__(cls, _format(size, fields))   # type: ignore[call-arg]

    def __init__(self, size: int, fields: Sequence[FieldSpec]) -> None:
        super().__init__(_format(size, fields))
        self.plain = struct.Struct(self.format)
        self.fields = tuple(fields)
        self.names = tuple(name for name, _, _ in fields)
        self._at = {name: (offset, struct.Struct("<" + code))
                    for name, offset, code in fields}
        self._zeros = tuple(_zero(code) for _, _, code in fields)

    def offset(self, name: str) -> int:
        """Where ``name`` starts (for error reports that point at a field)."""
        return self._at[name][0]

    def build(self, **values: Any) -> bytearray:
        """A new buffer with the named fields set; every other byte zero."""
        unknown = set(values) - set(self._at)
        if unknown:
            raise TypeError(f"no field {sorted(unknown)} in this layout")
        return bytearray(self.pack(*(values.get(n, z) for n, z in zip(self.names,
                                                                        self._zeros,
                                                                        strict=True))))

    def put(self, buf: bytearray | memoryview, offset: int = 0, **values: Any) -> None:
        """Set the named fields in ``buf`` (the structure starting at ``offset``) and
        leave every other byte as it is: layouts can overlay one another."""
        for name, value in values.items():
            at, st = self._at[name]
            st.pack_into(buf, offset + at, value)

    def get(self, buf: bytes | bytearray | memoryview, offset: int = 0) -> dict[str, Any]:
        """Every field by name."""
        return dict(zip(self.names, self.unpack_from(buf, offset), strict=True))

    def field(self, buf: bytes | bytearray | memoryview, name: str, offset: int = 0) -> Any:
        """One field's value."""
        at, st = self._at[name]
        return st.unpack_from(buf, offset + at)[0]

    def _picked(self, names: tuple[str, ...], start: int) -> struct.Struct:
        picked = [(n, o - start, c) for n, o, c in self.fields if n in names]
        if not picked or [f[0] for f in picked] != list(names):
            raise ValueError(f"{names} are not fields of this layout in offset order")
        end = picked[-1][1] + struct.calcsize("<" + picked[-1][2])
        return struct.Struct(_format(end, picked))

    def reader(self, *names: str) -> struct.Struct:
        """A plain Struct that unpacks just ``names`` (ascending) from the start of the
        structure, for per-command code that needs a few fields and not the rest."""
        return self._picked(names, 0)

    def span(self, *names: str) -> tuple[int, struct.Struct]:
        """(offset, Struct) covering ``names`` (ascending) from the first one's offset,
        to pack them in place at C speed; the bytes between them are written as zero, so
        use it only where those are reserved."""
        start = self._at[names[0]][0] if names and names[0] in self._at else 0
        return start, self._picked(names, start)
