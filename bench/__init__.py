"""Benchmarks: each prints one JSON object on stdout and draws a PNG."""
