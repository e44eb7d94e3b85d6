"""The row encodings both backends write, so a profile reads the same from either.

Why its own module: each backend imports this and never the other backend, so
editing SQLite cannot change Cassandra.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import orjson

from schemas.sequence import Interest, SeqEvent

INIT_HINT = "run `interest store init`"


def pack_events(events: Sequence[SeqEvent]) -> bytes:
    """A sequence as compact JSON rows: ``[[event_id, ts_ms, item_id, action, platform, weight], ...]``."""
    return orjson.dumps([[e.event_id, e.ts_ms, e.item_id, e.action, e.platform, e.weight] for e in events])


def unpack_events(raw: bytes) -> list[SeqEvent]:
    return [SeqEvent(r[0], r[1], r[2], r[3], r[4], float(r[5])) for r in orjson.loads(raw)]


def vector_bytes(vector: np.ndarray) -> bytes:
    """Little-endian float32, the on-disk form of a vector (SQLite and the Cassandra blob fallback)."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def pack_interests(interests: Sequence[Interest]) -> bytes:
    """A profile's interests as one blob: u32 header length, JSON ``[[weight, [items...]], ...]``, float32 vectors.

    Empty bytes for none.  One blob (not a table of rows) because interests are
    always read and replaced together with their profile, under its timestamp.
    """
    if not interests:
        return b""
    header = orjson.dumps([[float(i.weight), list(i.items)] for i in interests])
    vectors = [np.asarray(i.vector, dtype="<f4").tobytes() for i in interests]  # C order, as a stack would be
    if len({len(v) for v in vectors}) != 1:  # unpack_interests splits the tail evenly
        raise ValueError(f"interests of one profile differ in size: {[len(v) // 4 for v in vectors]}")
    return b"".join([struct.pack("<I", len(header)), header, *vectors])


def unpack_interests(raw: bytes | None) -> tuple[Interest, ...]:
    if not raw:
        return ()
    (size,) = struct.unpack_from("<I", raw)
    header = orjson.loads(raw[4 : 4 + size])
    vectors = np.frombuffer(raw[4 + size :], dtype="<f4").astype(np.float32).reshape(len(header), -1)
    return tuple(Interest(vectors[n], float(w), tuple(items)) for n, (w, items) in enumerate(header))


def top_k(
    ids: Sequence[str], matrix: np.ndarray, query: np.ndarray, k: int, exclude: Sequence[str] = ()
) -> list[tuple[str, float]]:
    """Top-k rows of ``matrix`` by dot product with ``query`` (ties broken by id), skipping ``exclude``."""
    if k <= 0 or not len(ids):
        return []
    scores = matrix @ np.asarray(query, dtype=np.float32).reshape(-1)
    skip = set(exclude)
    want = min(len(ids), k + len(skip))
    best = np.argpartition(-scores, want - 1)[:want] if want < len(ids) else np.arange(len(ids))
    ranked = sorted(
        ((ids[i], float(scores[i])) for i in best if ids[i] not in skip), key=lambda p: (-p[1], p[0])
    )
    return ranked[:k]
