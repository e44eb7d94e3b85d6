"""Dead-letter records: the original bytes plus headers saying where and why.

Headers: ``source_topic``, ``source_partition``, ``source_offset``,
``error_class`` (a short reason such as ``not_json``), ``error_message`` (the
specific explanation) and ``envelope_index`` for one element of an envelope.

A record too large for the DLQ: the raw input may be as large as its topic
allows, and a DLQ record that cannot be sent would be retried forever and hold
the partition.  So the value keeps at most ``DLQ_MAX_BYTES`` (a prefix) and
three more headers name the original: ``truncated`` (``1``),
``original_size`` (its length in bytes) and ``original_sha256`` (hex digest of
all of it), enough to find and verify the full message in its source topic.
A key over ``DLQ_MAX_KEY_BYTES`` is left off the same way, named by
``original_key_size`` and ``original_key_sha256``.  A truncated record cannot
be replayed as it is: fetch the original from ``source_topic``.
"""

from __future__ import annotations

import hashlib

Headers = list[tuple[str, bytes]]

# Half of Faust's producer_max_request_size (1,000,000): room for the headers and the key.
DLQ_MAX_BYTES = 512 * 1024
DLQ_MAX_KEY_BYTES = 4096


def dlq_headers(
    topic: str, partition: int, offset: int, reason: str, message: str, index: int | None = None
) -> Headers:
    headers: Headers = [
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        ("error_class", reason.encode()),
        ("error_message", message.encode("utf-8", errors="backslashreplace")[:4000]),
    ]
    if index is not None:
        headers.append(("envelope_index", str(index).encode()))
    return headers


def fit(raw: bytes, limit: int, headers: Headers) -> tuple[bytes, Headers]:
    """``raw`` and ``headers`` if it fits ``limit`` bytes; else its first ``limit`` bytes and headers naming it all.

    Cutting an already cut value keeps the first ``original_*`` headers: they name the input, not the last cut.
    """
    if len(raw) <= limit:
        return raw, headers
    if any(name == "truncated" for name, _ in headers):
        return raw[: max(limit, 0)], headers
    named = [("truncated", b"1"), ("original_size", str(len(raw)).encode()),
             ("original_sha256", hashlib.sha256(raw).hexdigest().encode())]
    return raw[: max(limit, 0)], [*headers, *named]


def fit_key(key: bytes | None, headers: Headers, limit: int = DLQ_MAX_KEY_BYTES) -> tuple[bytes | None, Headers]:
    """The key if it is at most ``limit`` bytes; else no key and headers naming it (the key only picks a partition)."""
    if key is None or len(key) <= limit:
        return key, headers
    named = [("original_key_size", str(len(key)).encode()),
             ("original_key_sha256", hashlib.sha256(key).hexdigest().encode())]
    return None, [*headers, *named]


def headers_dict(headers: Headers | None) -> dict[str, str]:
    return {k: v.decode("utf-8", errors="replace") for k, v in (headers or [])}
