"""CQL native protocol v3/v4 framing: headers, opcodes, body primitives, errors.

Why hand-written: the point of the test server is that the *real*
cassandra-driver talks to it over a socket, so the bytes must follow the
protocol spec (native_protocol_v4.spec) exactly; the encoders here are the
spec's ``[int]``, ``[string]``, ``[bytes]``... notations one by one.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field
from enum import IntEnum

HEADER = struct.Struct(">BBhBi")
MAX_BODY = 256 * 1024 * 1024
SUPPORTED_VERSIONS = (3, 4)
RESPONSE_FLAG = 0x80


class Opcode(IntEnum):
    ERROR = 0x00
    STARTUP = 0x01
    READY = 0x02
    AUTHENTICATE = 0x03
    OPTIONS = 0x05
    SUPPORTED = 0x06
    QUERY = 0x07
    RESULT = 0x08
    PREPARE = 0x09
    EXECUTE = 0x0A
    REGISTER = 0x0B
    EVENT = 0x0C
    BATCH = 0x0D
    AUTH_CHALLENGE = 0x0E
    AUTH_RESPONSE = 0x0F
    AUTH_SUCCESS = 0x10


class ErrorCode(IntEnum):
    SERVER_ERROR = 0x0000
    PROTOCOL_ERROR = 0x000A
    BAD_CREDENTIALS = 0x0100
    UNAVAILABLE = 0x1000
    OVERLOADED = 0x1001
    WRITE_TIMEOUT = 0x1100
    READ_TIMEOUT = 0x1200
    SYNTAX_ERROR = 0x2000
    UNAUTHORIZED = 0x2100
    INVALID = 0x2200
    CONFIG_ERROR = 0x2300
    ALREADY_EXISTS = 0x2400
    UNPREPARED = 0x2500


class Unset:
    """The protocol's "unset" value (length -2): leave the column alone."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = Unset()
Value = bytes | None | Unset


@dataclass(slots=True)
class Frame:
    version: int
    flags: int
    stream: int
    opcode: int
    body: bytes


class ProtocolViolation(Exception):
    """The peer sent something that is not a valid frame; the connection is closed."""


async def read_frame(reader: asyncio.StreamReader) -> Frame:
    """Read one request frame (raises ``asyncio.IncompleteReadError`` at EOF)."""
    header = await reader.readexactly(HEADER.size)
    version, flags, stream, opcode, length = HEADER.unpack(header)
    if length < 0 or length > MAX_BODY:
        raise ProtocolViolation(f"bad body length {length}")
    body = await reader.readexactly(length) if length else b""
    return Frame(version & 0x7F, flags, stream, opcode, body)


def encode_frame(version: int, stream: int, opcode: int, body: bytes, flags: int = 0) -> bytes:
    return HEADER.pack(version | RESPONSE_FLAG, flags, stream, opcode, len(body)) + body


class Reader:
    """Cursor over a frame body decoding the spec's notations."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ProtocolViolation("truncated message body")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def byte(self) -> int:
        return self._take(1)[0]

    def short(self) -> int:
        return int(struct.unpack(">H", self._take(2))[0])

    def int_(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def long(self) -> int:
        return int(struct.unpack(">q", self._take(8))[0])

    def string(self) -> str:
        return self._take(self.short()).decode()

    def long_string(self) -> str:
        return self._take(self.int_()).decode()

    def short_bytes(self) -> bytes:
        return self._take(self.short())

    def bytes_(self) -> bytes | None:
        n = self.int_()
        return None if n < 0 else self._take(n)

    def value(self) -> Value:
        n = self.int_()
        if n == -2:
            return UNSET
        return None if n < 0 else self._take(n)

    def string_map(self) -> dict[str, str]:
        return {self.string(): self.string() for _ in range(self.short())}

    def string_list(self) -> list[str]:
        return [self.string() for _ in range(self.short())]


class Writer:
    """Builds a frame body in the spec's notations."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def byte(self, v: int) -> Writer:
        self.buf.append(v)
        return self

    def short(self, v: int) -> Writer:
        self.buf += struct.pack(">H", v)
        return self

    def int_(self, v: int) -> Writer:
        self.buf += struct.pack(">i", v)
        return self

    def string(self, v: str) -> Writer:
        raw = v.encode()
        return self.short(len(raw)).raw(raw)

    def bytes_(self, v: bytes | None) -> Writer:
        if v is None:
            return self.int_(-1)
        return self.int_(len(v)).raw(v)

    def short_bytes(self, v: bytes) -> Writer:
        return self.short(len(v)).raw(v)

    def string_multimap(self, v: dict[str, list[str]]) -> Writer:
        self.short(len(v))
        for key, values in v.items():
            self.string(key).short(len(values))
            for item in values:
                self.string(item)
        return self

    def raw(self, v: bytes) -> Writer:
        self.buf += v
        return self

    def done(self) -> bytes:
        return bytes(self.buf)


@dataclass(slots=True)
class QueryParams:
    """``<query_parameters>`` of QUERY and EXECUTE (v3/v4 layout: one flags byte)."""

    consistency: int
    values: list[Value] = field(default_factory=list)
    skip_metadata: bool = False
    page_size: int | None = None
    paging_state: bytes | None = None
    timestamp: int | None = None


def read_query_params(r: Reader) -> QueryParams:
    params = QueryParams(r.short())
    flags = r.byte()
    if flags & 0x01:
        params.values = [r.value() for _ in range(r.short())]
    if flags & 0x40:
        raise ProtocolViolation("named values are not supported by this test server")
    params.skip_metadata = bool(flags & 0x02)
    if flags & 0x04:
        params.page_size = r.int_()
    if flags & 0x08:
        params.paging_state = r.bytes_()
    if flags & 0x10:
        r.short()  # serial consistency: no LWT here
    if flags & 0x20:
        params.timestamp = r.long()
    return params


class CqlError(Exception):
    """An ERROR response: code, message and the code-specific trailing fields."""

    def __init__(self, code: ErrorCode, message: str, extra: bytes = b"") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> bytes:
        return Writer().int_(int(self.code)).string(self.message).raw(self.extra).done()


def invalid(message: str) -> CqlError:
    return CqlError(ErrorCode.INVALID, message)


def syntax_error(message: str) -> CqlError:
    return CqlError(ErrorCode.SYNTAX_ERROR, message)


def unavailable(consistency: int, required: int, alive: int) -> CqlError:
    extra = Writer().short(consistency).int_(required).int_(alive).done()
    return CqlError(ErrorCode.UNAVAILABLE, "Cannot achieve consistency level", extra)


def write_timeout(consistency: int, received: int, block_for: int, write_type: str) -> CqlError:
    extra = Writer().short(consistency).int_(received).int_(block_for).string(write_type).done()
    return CqlError(ErrorCode.WRITE_TIMEOUT, "Operation timed out - received only 0 responses.", extra)


def read_timeout(consistency: int, received: int, block_for: int) -> CqlError:
    extra = Writer().short(consistency).int_(received).int_(block_for).byte(0).done()
    return CqlError(ErrorCode.READ_TIMEOUT, "Operation timed out - received only 0 responses.", extra)


def already_exists(keyspace: str, table: str) -> CqlError:
    what = f"table {keyspace}.{table}" if table else f"keyspace {keyspace}"
    extra = Writer().string(keyspace).string(table).done()
    return CqlError(ErrorCode.ALREADY_EXISTS, f"Cannot add already existing {what}", extra)


def unprepared(query_id: bytes) -> CqlError:
    extra = Writer().short_bytes(query_id).done()
    return CqlError(ErrorCode.UNPREPARED, f"Prepared query with ID {query_id.hex()} not found", extra)
