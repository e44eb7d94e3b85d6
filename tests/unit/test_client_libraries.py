"""The Kafka client libraries run their per-batch checksums in C, as the measured numbers assume."""

from __future__ import annotations

from kafka.record import util


def test_kafka_python_checksums_batches_in_c() -> None:
    # Without the crc32c package kafka-python falls back to a pure-Python CRC-32C on every record batch it
    # writes or reads: `interest produce`, the bench's load and its broker-floor reader all pay it.
    assert util.crc32c_c is not None, "pip install crc32c (a dependency of interest-updater)"
    assert util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value
