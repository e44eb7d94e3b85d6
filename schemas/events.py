"""Canonical event and identity-link records, and the rejection type.

Every platform's raw event becomes one ``CanonicalEvent``: one time unit
(UTC epoch milliseconds), one action vocabulary, one person id.  Anything
that cannot become one is a ``Rejected`` value (errors as data, not
exceptions) so a batch of a thousand messages with three bad ones yields
997 events and 3 specific reasons for the DLQ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.sequence import SeqEvent

ANON_PREFIX = "anon:"
ACTION_WEIGHTS: dict[str, float] = {"browse": 1.0, "click": 2.0, "purchase": 4.0}


@dataclass(frozen=True, slots=True)
class CanonicalEvent:
    """One behaviour event, platform-independent.

    ``person_id`` is the canonical person: the logged-in id when the event
    names one, else ``anon:<platform>:<device id>`` until an identity link
    says which person the device belongs to.
    """

    event_id: str
    person_id: str
    platform: str
    platform_user_id: str
    action: str
    item_id: str
    ts_ms: int
    weight: float = 1.0
    dwell_ms: int | None = None
    price: float | None = None
    quantity: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    # When the event reached Kafka (the raw message's timestamp), set by the ingest stage; freshness
    # is measured from it, because a tracker's event time can be minutes old or run ahead of the clock.
    produced_ms: int | None = None

    @property
    def anonymous(self) -> bool:
        return self.person_id.startswith(ANON_PREFIX)

    def to_seq_event(self) -> SeqEvent:
        return SeqEvent(self.event_id, self.ts_ms, self.item_id, self.action, self.platform, self.weight)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "person_id": self.person_id,
            "platform": self.platform,
            "platform_user_id": self.platform_user_id,
            "action": self.action,
            "item_id": self.item_id,
            "ts_ms": self.ts_ms,
            "weight": self.weight,
        }
        for name in ("dwell_ms", "price", "quantity"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.attributes:
            out["attributes"] = self.attributes
        if self.produced_ms is not None:
            out["produced_ms"] = self.produced_ms
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanonicalEvent:
        """Inverse of ``to_dict`` for records this system wrote itself."""
        return cls(
            event_id=data["event_id"],
            person_id=data["person_id"],
            platform=data["platform"],
            platform_user_id=data["platform_user_id"],
            action=data["action"],
            item_id=data["item_id"],
            ts_ms=int(data["ts_ms"]),
            weight=float(data.get("weight", 1.0)),
            dwell_ms=data.get("dwell_ms"),
            price=data.get("price"),
            quantity=data.get("quantity"),
            attributes=data.get("attributes") or {},
            produced_ms=data.get("produced_ms"),
        )


@dataclass(frozen=True, slots=True)
class IdentityLink:
    """"This platform's device id is this person" (from ``identity.links``)."""

    platform: str
    device_id: str
    person_id: str
    ts_ms: int

    @property
    def anon_person_id(self) -> str:
        return anon_person_id(self.platform, self.device_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "device_id": self.device_id,
            "person_id": self.person_id,
            "ts_ms": self.ts_ms,
        }


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why one input could not be used; travels to the DLQ with the raw bytes.

    ``reason`` is a short machine-readable class (``not_json``,
    ``missing_field``...) used as a metric label; ``message`` is the specific
    human explanation.
    """

    reason: str
    message: str
    index: int | None = None  # position inside an envelope, if any

    def __str__(self) -> str:
        where = f"events[{self.index}]: " if self.index is not None else ""
        return f"{where}{self.message}"


def anon_person_id(platform: str, device_id: str) -> str:
    """The person id of a device no link has claimed yet: ``anon:<platform>:<device id>``."""
    return f"{ANON_PREFIX}{platform}:{device_id}"


def parse_anon_id(person_id: str) -> tuple[str, str] | None:
    """(platform, device id) of an anonymous id, ``None`` for a person's own id; inverse of ``anon_person_id``."""
    if not person_id.startswith(ANON_PREFIX):
        return None
    platform, sep, device = person_id[len(ANON_PREFIX):].partition(":")
    return (platform, device) if sep else None
