"""Topic names: ``events.<platform>.<action>`` for raw events, and how to read one back."""

from __future__ import annotations

from schemas.sequence import ACTIONS


def raw_topic(platform: str, action: str) -> str:
    return f"events.{platform}.{action}"


def raw_topics(platforms: list[str]) -> list[str]:
    return [raw_topic(p, a) for p in platforms for a in ACTIONS]


def topic_platform_action(topic: str) -> tuple[str, str | None]:
    """``[prefix.]events.<platform>.<action>`` -> (platform, action or None)."""
    parts = topic.split(".")
    if len(parts) < 3:
        return "", None
    action = parts[-1] if parts[-1] in ACTIONS else None
    return parts[-2], action
