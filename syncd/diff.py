"""Pure decisions about one polled window: what changed, and whether orders were missed.

Nothing here does I/O. The store hands in the mirrored state of the returned ids, gets
back a list of :class:`OrderChange`, and writes exactly that.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from syncd.records import BUSINESS_FIELDS, PurchaseOrder, format_money


@dataclass(frozen=True)
class MirroredOrder:
    """The business fields of an order as the mirror holds them."""

    id: int
    po_number: str
    vendor_name: str
    grand_total: Decimal
    status: str | None
    items_summary: str | None
    version: int


class ChangeKind(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


@dataclass(frozen=True)
class FieldChange:
    old: str | None
    new: str | None


@dataclass(frozen=True)
class OrderChange:
    """What one returned order means for the mirror."""

    kind: ChangeKind
    order: PurchaseOrder
    version: int
    changes: Mapping[str, FieldChange] = field(default_factory=dict)


def _canonical_money(amount: Decimal) -> str:
    # 1200.5 and 1200.50 are the same amount: a re-rendered total is no change.
    normalized = amount.normalize()
    return format(normalized, "f") if normalized != 0 else "0"


def business_values(order: PurchaseOrder | MirroredOrder) -> dict[str, str | None]:
    """The business fields as published strings (money as its decimal string)."""
    return {
        "po_number": order.po_number,
        "vendor_name": order.vendor_name,
        "grand_total": format_money(order.grand_total),
        "status": order.status,
        "items_summary": order.items_summary,
    }


def content_key(order: PurchaseOrder | MirroredOrder) -> tuple[str | None, ...]:
    """The business fields, money as a canonical amount: equal keys mean no change.

    A fresh ``pdf_url`` token is no change. Compared directly rather than hashed: both
    sides are in memory, and a tuple compares exactly at a fraction of a digest's cost.
    """
    return (
        order.po_number,
        order.vendor_name,
        _canonical_money(order.grand_total),
        order.status,
        order.items_summary,
    )


def diff_order(order: PurchaseOrder, mirrored: MirroredOrder | None) -> OrderChange:
    """Created (version 1), updated (version + 1, with old and new values) or unchanged."""
    if mirrored is None:
        return OrderChange(ChangeKind.CREATED, order, 1)
    if content_key(order) == content_key(mirrored):
        return OrderChange(ChangeKind.UNCHANGED, order, mirrored.version)
    old, new = business_values(mirrored), business_values(order)
    changes = {
        name: FieldChange(old[name], new[name])
        for name in BUSINESS_FIELDS
        if old[name] != new[name]
        and not (name == "grand_total" and order.grand_total == mirrored.grand_total)
    }
    return OrderChange(ChangeKind.UPDATED, order, mirrored.version + 1, changes)


def diff_window(
    orders: Iterable[PurchaseOrder], mirrored: Mapping[int, MirroredOrder]
) -> list[OrderChange]:
    """Diff every returned order against the mirror, in the order returned."""
    return [diff_order(order, mirrored.get(order.id)) for order in orders]


def detect_gap(returned_ids: Iterable[int], known_ids: Iterable[int], mirror_empty: bool) -> bool:
    """True when the window may have skipped orders: none of it is known, yet we know some.

    The endpoint returns only the 20 newest orders. If the mirror already holds orders
    and not one returned id is among them, more than a window's worth arrived since the
    last poll, and the ones in between were never seen.
    """
    returned = set(returned_ids)
    if mirror_empty or not returned:
        return False
    return not (returned & set(known_ids))


def next_poll_delay(poll_interval: float, gap_detected: bool) -> float:
    """Seconds until the next poll: sooner while a gap is open, to catch up with the window."""
    if gap_detected:
        return max(1.0, min(poll_interval, max(5.0, poll_interval / 6)))
    return poll_interval
