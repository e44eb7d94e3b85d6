"""What every command shares: settings loaded once, and a user's mistake as one ``error:`` line.

Why exit code 2 and no traceback: a person who typed a command wrong, or has
not set something up yet, needs the one thing to do next, not a stack.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer

from schemas.settings import Settings, load_settings


def fail(message: str) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def first_line(exc: BaseException) -> str:
    """An exception as one line (pydantic's reports span many lines and link to the web)."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            where = ".".join(str(p) for p in err.get("loc", ())) or "settings"
            parts.append(f"{where}: {err.get('msg', '')}".replace("Value error, ", ""))
        return "; ".join(parts)
    return " ".join(str(exc).split())


def settings_or_exit(**overrides: Any) -> Settings:
    """Load settings; a bad setting is an argument error (exit 2) with the reason."""
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        reason = first_line(exc)
        fail(f"invalid settings: {reason}" + ("" if "interest config" in reason else " (see `interest config`)"))


def user_error(exc: BaseException) -> str | None:
    """What to tell a person whose command failed for a reason they can fix; ``None`` for a bug.

    Why a table here and not ``try`` blocks in every command: the same
    mistakes (no store yet, no broker running, no model, a missing file) reach
    every command, and each deserves the same one line saying what to do.
    """
    from kafka import errors as kafka_errors

    from model.manifest import ModelRejected
    from streams.kafka_config import KafkaConfigError
    from streams.stores.base import StoreError

    names = ("NoBrokersAvailable", "KafkaTimeoutError", "KafkaConnectionError")
    unreachable = tuple(getattr(kafka_errors, n) for n in names if hasattr(kafka_errors, n))
    if isinstance(exc, unreachable):
        where = _broker_url()
        return (f"no Kafka broker answered at {where} ({first_line(exc)}); start one with `interest broker` "
                "or point INTEREST_BROKER_URL at your cluster")
    if isinstance(exc, StoreError):
        return first_line(exc)
    if isinstance(exc, ModelRejected):
        return f"model refused: {first_line(exc)}; see `interest models list`"
    if isinstance(exc, KafkaConfigError):
        return first_line(exc)
    if isinstance(exc, FileNotFoundError):
        return f"no such file: {exc.filename or first_line(exc)}"
    if isinstance(exc, IsADirectoryError | PermissionError):
        return f"cannot read {exc.filename}: {exc.strerror}"
    if isinstance(exc, ValueError) and "unknown settings in the environment" in str(exc):
        return first_line(exc)
    return None


def _broker_url() -> str:
    try:
        return ",".join(load_settings().bootstrap_servers())
    except Exception:
        return "the configured broker"
