"""Contracts shared by the stream workers and the trainer.

Nothing in this package imports torch: stream workers depend on it.
"""
