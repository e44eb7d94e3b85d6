"""CQL types: parsing type names, the protocol's type options, and value (de)serialisation.

Why a codec of our own: the server stores the serialised bytes the driver
sends and returns them untouched, so it only decodes what it must look at
(timestamps, TTLs, limits, vectors for ANN scoring, literals in query text,
the rows of the system tables it synthesises).
"""

from __future__ import annotations

import ipaddress
import struct
import uuid
from dataclasses import dataclass
from typing import Any

# Native protocol type option ids (protocol spec section 4.2.5.2).
_NATIVE_IDS: dict[str, int] = {
    "ascii": 0x01,
    "bigint": 0x02,
    "blob": 0x03,
    "boolean": 0x04,
    "counter": 0x05,
    "double": 0x07,
    "float": 0x08,
    "int": 0x09,
    "timestamp": 0x0B,
    "uuid": 0x0C,
    "text": 0x0D,
    "varint": 0x0E,
    "timeuuid": 0x0F,
    "inet": 0x10,
    "smallint": 0x13,
    "tinyint": 0x14,
}
_COLLECTION_IDS = {"list": 0x20, "map": 0x21, "set": 0x22}
_ALIASES = {"varchar": "text"}
_INT_FORMATS = {
    "bigint": ">q",
    "counter": ">q",
    "timestamp": ">q",
    "int": ">i",
    "smallint": ">h",
    "tinyint": ">b",
}
_MARSHAL = "org.apache.cassandra.db.marshal."
_VECTOR_SUBTYPES = {"float": "FloatType", "double": "DoubleType", "int": "Int32Type", "bigint": "LongType"}


@dataclass(frozen=True, slots=True)
class CqlType:
    """A CQL type: ``name`` plus element types (collections) or a dimension (vectors)."""

    name: str
    params: tuple[CqlType, ...] = ()
    size: int = 0

    def __str__(self) -> str:
        if self.name == "vector":
            return f"vector<{self.params[0]}, {self.size}>"
        if self.params:
            return f"{self.name}<{', '.join(str(p) for p in self.params)}>"
        return self.name


TEXT = CqlType("text")
BIGINT = CqlType("bigint")
INT = CqlType("int")
FLOAT = CqlType("float")
BOOLEAN = CqlType("boolean")
UUID = CqlType("uuid")
INET = CqlType("inet")
SET_TEXT = CqlType("set", (TEXT,))
MAP_TEXT_TEXT = CqlType("map", (TEXT, TEXT))


def make_type(name: str, params: tuple[CqlType, ...] = (), size: int = 0) -> CqlType:
    """Build a type from a (possibly aliased) name; ``frozen`` is transparent on the wire."""
    name = _ALIASES.get(name.lower(), name.lower())
    if name == "frozen":
        return params[0]
    if name == "vector":
        if len(params) != 1 or size <= 0:
            raise ValueError("vector needs an element type and a positive dimension")
        if params[0].name not in _VECTOR_SUBTYPES:
            raise ValueError(f"vectors of {params[0]} are not supported")
        return CqlType("vector", params, size)
    if name in _COLLECTION_IDS:
        want = 2 if name == "map" else 1
        if len(params) != want:
            raise ValueError(f"{name} needs {want} element type(s)")
        return CqlType(name, params)
    if name not in _NATIVE_IDS or params:
        raise ValueError(f"unknown type {name}")
    return CqlType(name)


def type_option(t: CqlType) -> bytes:
    """The ``[option]`` that describes ``t`` in result and prepared metadata."""
    if t.name == "vector":
        cls = f"{_MARSHAL}VectorType({_MARSHAL}{_VECTOR_SUBTYPES[t.params[0].name]},{t.size})"
        raw = cls.encode()
        return struct.pack(">HH", 0, len(raw)) + raw
    if t.name in _COLLECTION_IDS:
        return struct.pack(">H", _COLLECTION_IDS[t.name]) + b"".join(type_option(p) for p in t.params)
    return struct.pack(">H", _NATIVE_IDS[t.name])


def encode(t: CqlType, value: Any) -> bytes | None:
    """Serialise a Python value (``None`` stays null)."""
    if value is None:
        return None
    name = t.name
    if name in _INT_FORMATS:
        return struct.pack(_INT_FORMATS[name], int(value))
    if name in ("text", "ascii"):
        return str(value).encode()
    if name == "blob":
        return bytes(value)
    if name == "boolean":
        return b"\x01" if value else b"\x00"
    if name == "float":
        return struct.pack(">f", float(value))
    if name == "double":
        return struct.pack(">d", float(value))
    if name in ("uuid", "timeuuid"):
        return (value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))).bytes
    if name == "inet":
        return ipaddress.ip_address(value).packed
    if name == "varint":
        n = int(value)
        return n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True)
    if name == "vector":
        return b"".join(encode(t.params[0], v) or b"" for v in value)
    if name in ("list", "set"):
        items = [encode(t.params[0], v) for v in value]
        return struct.pack(">i", len(items)) + b"".join(_value(i) for i in items)
    if name == "map":
        pairs = [(encode(t.params[0], k), encode(t.params[1], v)) for k, v in dict(value).items()]
        return struct.pack(">i", len(pairs)) + b"".join(_value(k) + _value(v) for k, v in pairs)
    raise ValueError(f"cannot encode {t}")


def decode(t: CqlType, data: bytes | None) -> Any:
    """Deserialise bytes of type ``t`` into a Python value."""
    if data is None:
        return None
    name = t.name
    if name in _INT_FORMATS:
        return struct.unpack(_INT_FORMATS[name], data)[0]
    if name in ("text", "ascii"):
        return data.decode()
    if name == "blob":
        return data
    if name == "boolean":
        return data != b"\x00"
    if name == "float":
        return struct.unpack(">f", data)[0]
    if name == "double":
        return struct.unpack(">d", data)[0]
    if name in ("uuid", "timeuuid"):
        return uuid.UUID(bytes=data)
    if name == "inet":
        return str(ipaddress.ip_address(data))
    if name == "varint":
        return int.from_bytes(data, "big", signed=True)
    if name == "vector":
        fmt = {"float": "f", "double": "d", "int": "i", "bigint": "q"}[t.params[0].name]
        return list(struct.unpack(f">{t.size}{fmt}", data))
    if name in ("list", "set", "map"):
        (count,), pos = struct.unpack_from(">i", data), 4
        items: list[Any] = []
        per = 2 if name == "map" else 1
        for _ in range(count * per):
            (size,) = struct.unpack_from(">i", data, pos)
            pos += 4
            items.append(None if size < 0 else data[pos : pos + size])
            pos += max(size, 0)
        if name == "map":
            return {
                decode(t.params[0], items[i]): decode(t.params[1], items[i + 1])
                for i in range(0, len(items), 2)
            }
        return [decode(t.params[0], i) for i in items]
    raise ValueError(f"cannot decode {t}")


def sort_key(t: CqlType, data: bytes) -> Any:
    """Clustering order of a value: numbers by value, everything else by bytes (as Cassandra)."""
    if t.name in _INT_FORMATS or t.name in ("float", "double", "varint"):
        return decode(t, data)
    return data


def _value(item: bytes | None) -> bytes:
    if item is None:
        return struct.pack(">i", -1)
    return struct.pack(">i", len(item)) + item
