"""What the Cassandra store needs from cassandra-driver beyond plain calls: error sorting and fast vectors.

* :func:`translate` sorts the driver's exceptions for the worker: transient
  ones become ``StoreUnavailable`` (hold and retry the batch), configuration
  mistakes ``StoreError`` saying which setting to check.
* :func:`use_numpy_vectors` swaps the driver's ``vector<float, N>`` codec,
  which packs one float at a time, for a numpy one (20x faster).
* :func:`settle` completes an asyncio future from a driver callback thread.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

import cassandra
import numpy as np
from cassandra.cluster import NoHostAvailable
from cassandra.connection import ConnectionException
from cassandra.cqltypes import FloatType, VectorType, lookup_casstype
from cassandra.protocol import ErrorMessage, ServerError
from cassandra.protocol import RequestExecutionException as ServerSideTransient
from cassandra.query import PreparedStatement

from streams.stores.base import StoreError, StoreUnavailable
from streams.stores.cassandra_config import CassandraConfig
from streams.stores.codec import INIT_HINT

_TRANSIENT = (
    cassandra.RequestExecutionException,
    ServerSideTransient,
    ServerError,
    cassandra.OperationTimedOut,
    ConnectionException,
)
_MARSHAL = "org.apache.cassandra.db.marshal."


def translate(exc: BaseException, cfg: CassandraConfig) -> BaseException:
    """Map a driver exception to ``StoreUnavailable``/``StoreError`` (anything else passes unchanged)."""
    if isinstance(exc, StoreError):
        return exc
    if isinstance(exc, NoHostAvailable):
        errors = list(exc.errors.values())
        if errors and all(isinstance(e, cassandra.AuthenticationFailed) for e in errors):
            who = f"user {cfg.username!r}" if cfg.username else "no credentials"
            return StoreError(
                f"Cassandra at {cfg.where} rejected the login ({who}): {errors[0]}; check "
                "INTEREST_CASSANDRA_USERNAME and INTEREST_CASSANDRA_PASSWORD"
            )
        if errors and all(isinstance(e, ssl.SSLError) or "SSL" in str(e) for e in errors):
            return StoreError(
                f"TLS handshake with Cassandra at {cfg.where} failed: {errors[0]}; check "
                "INTEREST_CASSANDRA_TLS_CA_FILE and INTEREST_CASSANDRA_TLS_CHECK_HOSTNAME"
            )
        return StoreUnavailable(f"no Cassandra host reachable at {cfg.where}: {exc.errors or exc}")
    if isinstance(exc, _TRANSIENT):
        return StoreUnavailable(f"Cassandra request failed ({type(exc).__name__}): {exc}")
    if isinstance(exc, cassandra.InvalidRequest) and "does not exist" in str(exc):
        return StoreError(f"Cassandra schema is missing ({exc}); {INIT_HINT}")
    if isinstance(exc, cassandra.Unauthorized | cassandra.AuthenticationFailed):
        return StoreError(f"Cassandra refused access as {cfg.username!r}: {exc}")
    if isinstance(exc, cassandra.DriverException | ErrorMessage):
        return StoreError(f"Cassandra rejected a request: {exc}")
    return exc


@functools.cache
def _numpy_vector_type(size: int) -> Any:
    """A ``vector<float, size>`` codec using numpy; the driver's packs one float at a time (20x slower)."""

    def serialize(cls: Any, value: Any, protocol_version: int) -> bytes:
        array = np.asarray(value, dtype=">f4").reshape(-1)
        if array.size != size:
            raise ValueError(f"expected a {size}-dim vector, got {array.size}-dim")
        return array.tobytes()

    def deserialize(cls: Any, raw: bytes, protocol_version: int) -> np.ndarray:
        return np.frombuffer(raw, dtype=">f4").astype(np.float32)

    base = lookup_casstype(f"{_MARSHAL}VectorType({_MARSHAL}FloatType,{size})")
    codec = {"serialize": classmethod(serialize), "deserialize": classmethod(deserialize)}
    return type("NumpyFloatVector", (base,), codec)


def float_vector_size(ctype: Any) -> int | None:
    vector = isinstance(ctype, type) and issubclass(ctype, VectorType)
    return int(ctype.vector_size) if vector and issubclass(ctype.subtype, FloatType) else None


def use_numpy_vectors(statement: PreparedStatement) -> None:
    def swap(ctype: Any) -> Any:
        size = float_vector_size(ctype)
        return ctype if size is None else _numpy_vector_type(size)

    statement.column_metadata = [c._replace(type=swap(c.type)) for c in statement.column_metadata]
    statement.result_metadata = [(*c[:3], swap(c[3])) for c in statement.result_metadata or []]


def settle(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if not fut.done():
        fut.set_exception(error) if error is not None else fut.set_result(value)
