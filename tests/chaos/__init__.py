"""Fault tests: crashes, replays, poison, outages, broker restarts, bad input, security, erasure.

Each test injects a fault into real parts (worker processes, the embedded
broker, SQLite, the CQL test server over the real driver), prints what it
injected and the counts it compared (``pytest -s`` shows them), and checks
the store against the oracle (``testkit.oracle``).  Long variants are marked
``soak`` and run only with ``INTEREST_TEST_SOAK=1``.
"""
