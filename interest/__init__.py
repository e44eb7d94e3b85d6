"""The application layer: the `interest` commands and the jobs they run.

Demo, producer, periodic trainer, re-encode, DLQ and forget operations sit here, above the
worker (`streams/`), so neither the model nor the worker imports a command.
"""
