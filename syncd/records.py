"""Validation of the records the InventoryArts API returns (pure).

Each purchase order is validated on its own: one malformed record is skipped with its
reason and the rest of the window is kept. Money is ``Decimal`` from the wire on: the
JSON is parsed with ``parse_float=Decimal`` and a ``float`` is refused here, so a binary
float can never round a total.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

BUSINESS_FIELDS = ("po_number", "vendor_name", "grand_total", "status", "items_summary")
MAX_ID = 2**63 - 1  # the mirror's BIGINT; a larger id would fail the whole window's insert


@dataclass(frozen=True)
class PurchaseOrder:
    """One validated purchase order as the API returned it."""

    id: int
    po_number: str
    vendor_name: str
    grand_total: Decimal
    status: str | None
    items_summary: str | None
    pdf_url: str | None


@dataclass(frozen=True)
class RejectedRecord:
    """A record of the window that failed validation, and why (never its values)."""

    index: int
    id: int | None
    reason: str


@dataclass(frozen=True)
class ValidatedWindow:
    """The orders of one response: valid ones (first occurrence of each id) and the rest."""

    orders: tuple[PurchaseOrder, ...]
    rejected: tuple[RejectedRecord, ...]
    duplicate_ids: tuple[int, ...]


class RecordError(ValueError):
    """A single record is malformed; the message names the field, not its value."""


def parse_money(value: object) -> Decimal:
    """A finite Decimal from a decimal string, an int or a Decimal; never from a float."""
    if isinstance(value, bool | float):
        raise RecordError("must be a decimal string or an exact number, not a binary float")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = Decimal(value.strip())
        except InvalidOperation:
            raise RecordError("is not a decimal number") from None
    else:
        raise RecordError(f"must be a decimal string or number, not {type(value).__name__}")
    if not amount.is_finite():
        raise RecordError("must be a finite number")
    return amount


def format_money(amount: Decimal) -> str:
    """The decimal string syncd publishes: fixed-point, scale as received ("1200.50")."""
    return format(amount, "f")


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise RecordError(f"{field} must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise RecordError(f"{field} must be an integer")


def _text(record: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = record.get(field)
    if value is None:
        if required:
            raise RecordError(f"{field} is missing")
        return None
    if not isinstance(value, str):
        raise RecordError(f"{field} must be a string, not {type(value).__name__}")
    return value


def parse_purchase_order(record: object) -> PurchaseOrder:
    """Validate one record of ``purchase_orders.php``; raise :class:`RecordError`."""
    if not isinstance(record, dict):
        raise RecordError(f"record must be a JSON object, not {type(record).__name__}")
    if "id" not in record or record["id"] is None:
        raise RecordError("id is missing")
    order_id = _integer(record["id"], "id")
    if not 0 < order_id <= MAX_ID:
        raise RecordError("id must be a positive 64-bit integer")
    if "grand_total" not in record or record["grand_total"] is None:
        raise RecordError("grand_total is missing")
    try:
        total = parse_money(record["grand_total"])
    except RecordError as exc:
        raise RecordError(f"grand_total {exc}") from None
    return PurchaseOrder(
        id=order_id,
        po_number=_text(record, "po_number", required=True) or "",
        vendor_name=_text(record, "vendor_name", required=True) or "",
        grand_total=total,
        status=_text(record, "status", required=False),
        items_summary=_text(record, "items_summary", required=False),
        pdf_url=_text(record, "pdf_url", required=False),
    )


def validate_window(payload: Sequence[object]) -> ValidatedWindow:
    """Validate every record of a window on its own, keeping the first of duplicate ids."""
    orders: list[PurchaseOrder] = []
    rejected: list[RejectedRecord] = []
    duplicates: list[int] = []
    seen: set[int] = set()
    for index, record in enumerate(payload):
        try:
            order = parse_purchase_order(record)
        except RecordError as exc:
            raw_id = record.get("id") if isinstance(record, dict) else None
            safe_id = raw_id if isinstance(raw_id, int) and not isinstance(raw_id, bool) else None
            rejected.append(RejectedRecord(index=index, id=safe_id, reason=str(exc)))
            continue
        if order.id in seen:
            duplicates.append(order.id)
            continue
        seen.add(order.id)
        orders.append(order)
    return ValidatedWindow(tuple(orders), tuple(rejected), tuple(duplicates))
