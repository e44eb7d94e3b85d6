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
        fail(f"invalid settings: {first_line(exc)} (see `interest config`)")
