"""The pure diff: created/updated/unchanged, the content key, and gap detection."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from syncd.diff import (
    ChangeKind,
    FieldChange,
    MirroredOrder,
    content_key,
    detect_gap,
    diff_order,
    diff_window,
    next_poll_delay,
)
from syncd.records import PurchaseOrder


def order(**overrides: object) -> PurchaseOrder:
    base = PurchaseOrder(
        id=105,
        po_number="PO-260105-1",
        vendor_name="Sweetwater",
        grand_total=Decimal("1200.50"),
        status="Draft",
        items_summary="1x Yamaha Synth",
        pdf_url="https://x/print_po.php?po_id=105&token=one",
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def mirrored(version: int = 1, **overrides: object) -> MirroredOrder:
    o = order(**overrides)
    return MirroredOrder(
        o.id, o.po_number, o.vendor_name, o.grand_total, o.status, o.items_summary, version
    )


def test_new_id_is_created_version_1() -> None:
    """An id the mirror does not hold is created with version 1."""
    change = diff_order(order(), None)
    assert change.kind is ChangeKind.CREATED
    assert change.version == 1


def test_new_pdf_token_is_no_change() -> None:
    """Only the pdf_url changed: unchanged, version kept."""
    change = diff_order(order(pdf_url="https://x/print_po.php?token=two"), mirrored(version=3))
    assert change.kind is ChangeKind.UNCHANGED
    assert change.version == 3


def test_content_key_ignores_pdf_url() -> None:
    """The content key covers business fields only."""
    assert content_key(order(pdf_url="a")) == content_key(order(pdf_url="b"))


def test_rerendered_total_is_no_change() -> None:
    """1200.5 and 1200.50 are the same amount."""
    change = diff_order(order(grand_total=Decimal("1200.5")), mirrored())
    assert change.kind is ChangeKind.UNCHANGED


def test_changed_fields_give_update_with_old_and_new() -> None:
    """status and total changed: updated, version + 1, exactly those fields."""
    change = diff_order(
        order(status="Approved", grand_total=Decimal("1300.00")), mirrored(version=1)
    )
    assert change.kind is ChangeKind.UPDATED
    assert change.version == 2
    assert dict(change.changes) == {
        "status": FieldChange("Draft", "Approved"),
        "grand_total": FieldChange("1200.50", "1300.00"),
    }


@pytest.mark.parametrize("field", ["po_number", "vendor_name", "status", "items_summary"])
def test_each_business_field_counts(field: str) -> None:
    """A change in any business field is an update."""
    change = diff_order(order(**{field: "changed"}), mirrored())
    assert change.kind is ChangeKind.UPDATED
    assert set(change.changes) == {field}


def test_status_appearing_is_an_update() -> None:
    """None to a value is a change."""
    change = diff_order(order(status="Draft"), mirrored(status=None))
    assert change.changes["status"] == FieldChange(None, "Draft")


def test_diff_window_uses_mirror_by_id() -> None:
    """Each order is compared with its own mirror row."""
    changes = diff_window([order(id=1), order(id=2)], {2: mirrored(id=2)})
    assert [c.kind for c in changes] == [ChangeKind.CREATED, ChangeKind.UNCHANGED]


def test_gap_when_no_returned_id_is_known() -> None:
    """A non-empty mirror and a window of only new ids: gap."""
    assert detect_gap([30, 29, 28], known_ids=[], mirror_empty=False)


def test_no_gap_when_window_overlaps() -> None:
    """One known id in the window is enough."""
    assert not detect_gap([30, 29, 28], known_ids=[28], mirror_empty=False)


def test_no_gap_on_first_sync() -> None:
    """An empty mirror cannot have missed anything."""
    assert not detect_gap([3, 2, 1], known_ids=[], mirror_empty=True)


def test_no_gap_on_empty_window() -> None:
    """Nothing returned: no evidence of a gap."""
    assert not detect_gap([], known_ids=[], mirror_empty=False)


def test_poll_sooner_while_gap_open() -> None:
    """A gap shortens the next poll; otherwise the interval holds."""
    assert next_poll_delay(60, gap_detected=False) == 60
    assert next_poll_delay(60, gap_detected=True) == 10
    assert next_poll_delay(2, gap_detected=True) == 2
