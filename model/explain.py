"""Which of a person's events drive their vector and a given recommendation: occlusion through the ONNX encoder.

Method: leave-one-out occlusion.  The sequence is encoded once as it is and once
without each of its events, all rows in one batched runtime call (51 rows for a
50-event window).  An event's attribution is what its removal costs:

* for the vector, ``1 - cos(v, v_without_i)`` (how far the vector moves);
* for an item, ``score(v) - score(v_without_i)`` with ``score = v . item`` (how
  much the item's score drops), so a positive value means the event pushes the
  item up and a negative one that it holds it down.

Why occlusion and not a Shapley approximation: it is exact for what a person
asks ("what if this event had not happened?"), deterministic, and costs N+1
encoder rows in one call; a sampled Shapley estimate (KernelSHAP, permutation
sampling) needs tens of passes per event for a stable ranking, which does not
fit an on-request budget of 200 ms on a CPU.  The price: interactions between
events (two that only matter together) are split, not shown; the README says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from schemas.sequence import SeqEvent


class Encodes(Protocol):  # the slice of ``EncoderRuntime`` this module uses (keeps it testable and torch-free)
    @property
    def spec(self) -> Any: ...  # pragma: no cover

    def encode(self, sequences: Sequence[Sequence[SeqEvent]]) -> np.ndarray: ...  # pragma: no cover

    def item_vectors(self, item_ids: Sequence[str]) -> np.ndarray: ...  # pragma: no cover


@dataclass(frozen=True, slots=True)
class EventAttribution:
    event: SeqEvent
    score: float  # vector: 1 - cos; item: drop in the item's score when the event is left out


@dataclass(frozen=True, slots=True)
class Explanation:
    target: str  # "vector" or the item id
    base_score: float  # the item's score with every event (1.0 for the vector: cos with itself)
    events: list[EventAttribution]  # in the sequence's order; ``ranked`` sorts them

    def ranked(self) -> list[EventAttribution]:
        return sorted(self.events, key=lambda a: (-a.score, -a.event.ts_ms, a.event.event_id))


def explain(runtime: Encodes, events: Sequence[SeqEvent], item: str | None = None,
            window: int | None = None) -> Explanation:
    """Attribution of each of the last ``window`` events (default: the model's window) to the vector or ``item``."""
    seq = list(events)[-(window or int(getattr(runtime.spec, "max_len", len(events)) or len(events))):]
    if not seq:
        return Explanation(item or "vector", 0.0, [])
    rows = [seq] + [seq[:i] + seq[i + 1:] for i in range(len(seq))]
    vectors = runtime.encode(rows)
    base, without = vectors[0], vectors[1:]
    if item is None:
        norms = np.linalg.norm(without, axis=1) * max(float(np.linalg.norm(base)), 1e-12)
        cos = (without @ base) / np.maximum(norms, 1e-12)
        scores = 1.0 - cos
        base_score = 1.0
    else:
        item_vec = runtime.item_vectors([item])[0]
        base_score = float(base @ item_vec)
        scores = base_score - without @ item_vec
    return Explanation(item or "vector", base_score,
                       [EventAttribution(e, float(s)) for e, s in zip(seq, scores, strict=True)])
