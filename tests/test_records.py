"""Validation of upstream records: money, optional fields, one bad record at a time."""

from __future__ import annotations

from decimal import Decimal

import pytest

from syncd.records import (
    RecordError,
    format_money,
    parse_money,
    parse_purchase_order,
    validate_window,
)


def record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": 105,
        "po_number": "PO-260105-1",
        "vendor_name": "Sweetwater",
        "grand_total": "1200.50",
        "status": "Draft",
        "pdf_url": "https://inventoryarts.com/print_po.php?po_id=105&token=abc",
        "items_summary": "1x Yamaha Synth, 2x Cables",
    }
    base.update(overrides)
    return base


def test_money_from_string_keeps_its_scale() -> None:
    """'1200.50' becomes Decimal('1200.50') and is published as '1200.50'."""
    amount = parse_money("1200.50")
    assert amount == Decimal("1200.50")
    assert format_money(amount) == "1200.50"


def test_money_from_json_number_is_exact() -> None:
    """A number parsed with parse_float=Decimal stays exact."""
    assert format_money(parse_money(Decimal("0.1"))) == "0.1"
    assert parse_money(12) == Decimal(12)


def test_money_refuses_binary_float() -> None:
    """A float never becomes money."""
    with pytest.raises(RecordError, match="float"):
        parse_money(0.1)


@pytest.mark.parametrize("bad", ["abc", "NaN", "Infinity", "", True, None, [1]])
def test_money_refuses_non_numbers(bad: object) -> None:
    """Strings that are not finite decimals, booleans and other types are refused."""
    with pytest.raises(RecordError):
        parse_money(bad)


def test_money_format_never_uses_exponent() -> None:
    """Scientific notation from the wire is published as a plain decimal."""
    assert format_money(parse_money("1E+3")) == "1000"


def test_status_is_optional() -> None:
    """A record without status is valid, with status None."""
    data = record()
    del data["status"]
    assert parse_purchase_order(data).status is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"id": None}, "id is missing"),
        ({"id": "x"}, "id must be an integer"),
        ({"id": True}, "id must be an integer"),
        ({"grand_total": None}, "grand_total is missing"),
        ({"grand_total": "12,50"}, "grand_total is not a decimal"),
        ({"po_number": 7}, "po_number must be a string"),
        ({"vendor_name": None}, "vendor_name is missing"),
    ],
)
def test_invalid_record_reason(overrides: dict[str, object], reason: str) -> None:
    """Each malformed field is named in the reason."""
    with pytest.raises(RecordError, match=reason):
        parse_purchase_order(record(**overrides))


def test_window_keeps_valid_records_around_a_bad_one() -> None:
    """One bad record is skipped with its index and reason; the rest are kept."""
    window = validate_window([record(id=1), record(id=2, grand_total="abc"), record(id=3)])
    assert [o.id for o in window.orders] == [1, 3]
    assert len(window.rejected) == 1
    assert window.rejected[0].index == 1
    assert window.rejected[0].id == 2
    assert "grand_total" in window.rejected[0].reason


def test_window_rejects_non_objects() -> None:
    """A list element that is not an object is rejected, not a crash."""
    window = validate_window(["oops", record(id=4)])
    assert [o.id for o in window.orders] == [4]
    assert window.rejected[0].reason.startswith("record must be a JSON object")


def test_window_keeps_first_of_duplicate_ids() -> None:
    """Duplicate ids in one response: the first occurrence wins, the id is reported."""
    window = validate_window([record(id=5, status="A"), record(id=5, status="B")])
    assert [o.status for o in window.orders] == ["A"]
    assert window.duplicate_ids == (5,)


def test_rejection_reason_never_quotes_values() -> None:
    """The reason names the field, never the value (it could hold a signed URL)."""
    window = validate_window([record(grand_total="secret-looking-value")])
    assert "secret-looking-value" not in window.rejected[0].reason
