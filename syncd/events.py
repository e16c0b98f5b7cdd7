"""Pure builders of the CloudEvents syncd publishes (DESIGN §6).

An event id is a UUIDv5 of what the event is about (connection, order, version, type),
so the same logical event has the same id however often it is built or delivered, and
consumers can deduplicate on it. ``pdf_url`` never enters an event.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from syncd.diff import ChangeKind, OrderChange, business_values

TYPE_PREFIX = "com.inventoryarts."
PO_CREATED = TYPE_PREFIX + "purchase_order.created"
PO_UPDATED = TYPE_PREFIX + "purchase_order.updated"
PO_PDF_ARCHIVED = TYPE_PREFIX + "purchase_order.pdf_archived"
PO_PDF_FAILED = TYPE_PREFIX + "purchase_order.pdf_failed"
GAP_DETECTED = TYPE_PREFIX + "sync.gap_detected"
AUTH_FAILED = TYPE_PREFIX + "connection.auth_failed"

# Fixed namespace: changing it would change every event id ever published.
EVENT_NAMESPACE = uuid.UUID("7f1c7a52-3b1e-5a4f-9a56-3f0d3c1e9b10")


@dataclass(frozen=True)
class Event:
    """One CloudEvent, ready to be stored in the outbox."""

    id: str
    type: str
    source: str
    subject: str
    time: datetime
    data: Mapping[str, Any]

    def to_cloudevent(self) -> dict[str, Any]:
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": self.source,
            "type": self.type,
            "subject": self.subject,
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json",
            "data": self.data,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_cloudevent(), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class StoredEvent:
    """An event as the outbox holds it: its position and its exact JSON, as sinks send it."""

    seq: int
    event_id: str
    type: str
    subject: str
    connection: str
    payload: str


def source_of(connection: str) -> str:
    return f"urn:syncd:{connection}"


def event_id(*parts: object) -> str:
    """Deterministic id: the same parts always give the same id."""
    return str(uuid.uuid5(EVENT_NAMESPACE, "/".join(str(p) for p in parts)))


def purchase_order_data(change: OrderChange) -> dict[str, Any]:
    order = change.order
    return {"id": order.id, **business_values(order), "version": change.version}


def order_events(connection: str, changes: Iterable[OrderChange], now: datetime) -> list[Event]:
    """``created``/``updated`` events for the changes that are not ``unchanged``."""
    events = []
    for change in changes:
        if change.kind is ChangeKind.UNCHANGED:
            continue
        data: dict[str, Any] = {"purchase_order": purchase_order_data(change)}
        if change.kind is ChangeKind.CREATED:
            event_type = PO_CREATED
        else:
            event_type = PO_UPDATED
            data["changes"] = {
                name: {"old": fc.old, "new": fc.new} for name, fc in change.changes.items()
            }
        events.append(
            Event(
                id=event_id(connection, change.order.id, change.version, event_type),
                type=event_type,
                source=source_of(connection),
                subject=str(change.order.id),
                time=now,
                data=data,
            )
        )
    return events


def gap_event(
    connection: str, returned_ids: Iterable[int], known_before: int, now: datetime
) -> Event:
    """``sync.gap_detected``: the window did not overlap the orders we knew."""
    returned = sorted(returned_ids)
    window = hashlib.sha256(",".join(map(str, returned)).encode()).hexdigest()
    return Event(
        id=event_id(connection, "gap", window),
        type=GAP_DETECTED,
        source=source_of(connection),
        subject=connection,
        time=now,
        data={"connection": connection, "returned": len(returned), "known_before": known_before},
    )


def auth_failed_event(connection: str, error: str, rejected_token: str, now: datetime) -> Event:
    """``connection.auth_failed``, one per rejected refresh token (the id says which)."""
    fingerprint = hashlib.sha256(rejected_token.encode()).hexdigest()
    return Event(
        id=event_id(connection, "auth_failed", fingerprint),
        type=AUTH_FAILED,
        source=source_of(connection),
        subject=connection,
        time=now,
        data={"connection": connection, "error": error},
    )


def pdf_archived_event(
    connection: str, order_id: int, version: int, sha256: str, size: int, path: str, now: datetime
) -> Event:
    """``pdf_archived``: the PDF of this order version is on disk at ``path`` (relative)."""
    return Event(
        id=event_id(connection, order_id, version, PO_PDF_ARCHIVED),
        type=PO_PDF_ARCHIVED,
        source=source_of(connection),
        subject=str(order_id),
        time=now,
        data={
            "purchase_order_id": order_id,
            "version": version,
            "sha256": sha256,
            "size": size,
            "path": path,
        },
    )


def pdf_failed_event(
    connection: str, order_id: int, version: int, reason: str, retries: int, now: datetime
) -> Event:
    """``pdf_failed``: this version's PDF will not be archived (``retries``: manual retries)."""
    return Event(
        id=event_id(connection, order_id, version, PO_PDF_FAILED, retries),
        type=PO_PDF_FAILED,
        source=source_of(connection),
        subject=str(order_id),
        time=now,
        data={"purchase_order_id": order_id, "version": version, "reason": reason},
    )
