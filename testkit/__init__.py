"""Test support shared by tests/ and bench/: worker processes, the oracle and its comparer, Kafka offset helpers,
the secure Kafka proxy, the CQL test server and the rolling-redeploy harness.

Why a package and not tests/: bench/ drives the same harness, and nothing may import tests/.
"""
