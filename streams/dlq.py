"""Dead-letter records: the original bytes plus headers saying where and why.

Headers: ``source_topic``, ``source_partition``, ``source_offset``,
``error_class`` (a short reason such as ``not_json``), ``error_message`` (the
specific explanation) and ``envelope_index`` for one element of an envelope.
"""

from __future__ import annotations


def dlq_headers(
    topic: str, partition: int, offset: int, reason: str, message: str, index: int | None = None
) -> list[tuple[str, bytes]]:
    headers = [
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
        ("error_class", reason.encode()),
        ("error_message", message.encode("utf-8", errors="backslashreplace")[:4000]),
    ]
    if index is not None:
        headers.append(("envelope_index", str(index).encode()))
    return headers


def headers_dict(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    return {k: v.decode("utf-8", errors="replace") for k, v in (headers or [])}
