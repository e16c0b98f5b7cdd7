"""Event building: CloudEvents shape, deterministic ids, nothing secret."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from syncd.diff import ChangeKind, FieldChange, OrderChange
from syncd.events import (
    AUTH_FAILED,
    GAP_DETECTED,
    PO_CREATED,
    PO_UPDATED,
    auth_failed_event,
    gap_event,
    order_events,
)
from syncd.records import PurchaseOrder

NOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
ORDER = PurchaseOrder(
    105, "PO-1", "Sweetwater", Decimal("1200.50"), None, "2x Cables", "https://x?token=SECRET"
)


def test_created_event_shape() -> None:
    """A created event is a CloudEvents 1.0 object with the contract's purchase_order."""
    (event,) = order_events("band", [OrderChange(ChangeKind.CREATED, ORDER, 1)], NOW)
    body = json.loads(event.to_json())
    assert body["specversion"] == "1.0"
    assert body["type"] == PO_CREATED
    assert body["source"] == "urn:syncd:band"
    assert body["subject"] == "105"
    assert body["time"] == "2026-01-05T12:00:00Z"
    assert body["data"] == {
        "purchase_order": {
            "id": 105,
            "po_number": "PO-1",
            "vendor_name": "Sweetwater",
            "grand_total": "1200.50",
            "status": None,
            "items_summary": "2x Cables",
            "version": 1,
        }
    }


def test_updated_event_carries_changes() -> None:
    """An updated event has old and new values per changed field."""
    change = OrderChange(ChangeKind.UPDATED, ORDER, 2, {"status": FieldChange("Draft", None)})
    (event,) = order_events("band", [change], NOW)
    assert event.type == PO_UPDATED
    assert event.data["changes"] == {"status": {"old": "Draft", "new": None}}
    assert event.data["purchase_order"]["version"] == 2


def test_unchanged_gives_no_event() -> None:
    """Unchanged orders produce nothing."""
    assert order_events("band", [OrderChange(ChangeKind.UNCHANGED, ORDER, 4)], NOW) == []


def test_pdf_url_never_in_event() -> None:
    """The signed pdf_url is not published."""
    (event,) = order_events("band", [OrderChange(ChangeKind.CREATED, ORDER, 1)], NOW)
    assert "SECRET" not in event.to_json()
    assert "pdf_url" not in event.to_json()


def test_ids_are_deterministic() -> None:
    """The same change at another time has the same id; another version does not."""
    first = order_events("band", [OrderChange(ChangeKind.CREATED, ORDER, 1)], NOW)[0]
    again = order_events("band", [OrderChange(ChangeKind.CREATED, ORDER, 1)], datetime.now(UTC))[0]
    other = order_events("band", [OrderChange(ChangeKind.UPDATED, ORDER, 2)], NOW)[0]
    elsewhere = order_events("choir", [OrderChange(ChangeKind.CREATED, ORDER, 1)], NOW)[0]
    assert first.id == again.id
    assert len({first.id, other.id, elsewhere.id}) == 3


def test_gap_event() -> None:
    """gap_detected names the connection and counts; its id depends on the window."""
    event = gap_event("band", [3, 2, 1], known_before=20, now=NOW)
    assert event.type == GAP_DETECTED
    assert event.subject == "band"
    assert event.data == {"connection": "band", "returned": 3, "known_before": 20}
    assert gap_event("band", [1, 2, 3], 20, NOW).id == event.id
    assert gap_event("band", [4, 2, 3], 20, NOW).id != event.id


def test_auth_failed_event_is_one_per_rejected_token() -> None:
    """Same rejected token, same id; the token itself is not in the event."""
    event = auth_failed_event("band", "invalid_grant", "rt-secret-123", NOW)
    assert event.type == AUTH_FAILED
    assert auth_failed_event("band", "x", "rt-secret-123", NOW).id == event.id
    assert auth_failed_event("band", "x", "rt-other", NOW).id != event.id
    assert "rt-secret-123" not in event.to_json()
