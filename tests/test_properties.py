"""Property tests: diff and versions over random poll sequences, money, config, event ids."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.config import load_config
from syncd.diff import ChangeKind, OrderChange
from syncd.errors import ConfigError
from syncd.events import EVENT_NAMESPACE, event_id, order_events
from syncd.records import PurchaseOrder, RecordError, format_money, parse_money
from syncd.store.database import Database, open_database
from syncd.store.mirror import apply_poll
from syncd.store.outbox import read_after

CREATED = "com.inventoryarts.purchase_order.created"
UPDATED = "com.inventoryarts.purchase_order.updated"
SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    """One migrated SQLite database; each example uses its own connection name in it."""
    path = tmp_path_factory.mktemp("props") / "syncd.db"
    database = open_database(f"sqlite:///{path}")
    yield database
    database.close()


# --- diff and versions over random windows ---------------------------------------------

TOTALS = ["10.5", "10.50", "11", "11.00", "0", "0.00", "-3.25"]
content = st.fixed_dictionaries(
    {
        "po_number": st.sampled_from(["PO-1", "PO-2"]),
        "vendor_name": st.sampled_from(["Yamaha", "Zildjian"]),
        "grand_total": st.sampled_from(TOTALS),
        "status": st.sampled_from([None, "Approved", "Received"]),
        "items_summary": st.sampled_from([None, "", "1x Drum", "2x Drum ✓"]),
    }
)
window = st.dictionaries(st.integers(1, 8), content, max_size=6)
windows = st.lists(window, min_size=1, max_size=8)


def _order(order_id: int, fields: dict[str, Any]) -> PurchaseOrder:
    return PurchaseOrder(
        id=order_id,
        po_number=fields["po_number"],
        vendor_name=fields["vendor_name"],
        grand_total=parse_money(fields["grand_total"]),
        status=fields["status"],
        items_summary=fields["items_summary"],
        pdf_url=None,
    )


def _key(fields: dict[str, Any]) -> tuple[Any, ...]:
    """Business content as the contract compares it: 10.5 and 10.50 are one amount."""
    total = Decimal(fields["grand_total"])
    return (
        fields["po_number"],
        fields["vendor_name"],
        total,
        fields["status"],
        fields["items_summary"],
    )


@SETTINGS
@given(polls=windows)
def test_versions_count_distinct_content_changes(db: Database, polls: list[dict[int, Any]]) -> None:
    """Version = changes seen + 1; one created per id, one updated per version > 1."""
    connection = f"c{uuid.uuid4().hex[:10]}"
    start = datetime(2026, 1, 1, tzinfo=UTC)
    expected: dict[int, int] = {}
    last: dict[int, tuple[Any, ...]] = {}
    for step, win in enumerate(polls):
        orders = tuple(_order(i, f) for i, f in win.items())
        apply_poll(db, connection, orders, start + timedelta(minutes=step))
        for i, fields in win.items():
            if i not in expected:
                expected[i] = 1
            elif _key(fields) != last[i]:
                expected[i] += 1
            last[i] = _key(fields)
    events = [e for e in read_after(db, 0, 1_000_000) if e.connection == connection]
    with db.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT id, version FROM purchase_orders WHERE connection = ?", (connection,)
        ).all()
    assert dict(rows) == expected
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    for order_id, version in expected.items():
        mine = [e for e in events if e.subject == str(order_id)]
        assert sum(e.type == CREATED for e in mine) == 1
        updated = [json.loads(e.payload)["data"] for e in mine if e.type == UPDATED]
        assert [u["purchase_order"]["version"] for u in updated] == list(range(2, version + 1))
        assert all(u["changes"] for u in updated)  # an update always names what changed


@SETTINGS
@given(win=window.filter(bool))
def test_replaying_a_window_adds_nothing(db: Database, win: dict[int, Any]) -> None:
    """The same window applied twice: the second poll creates, updates and emits nothing."""
    connection = f"c{uuid.uuid4().hex[:10]}"
    orders = tuple(_order(i, f) for i, f in win.items())
    now = datetime(2026, 1, 1, tzinfo=UTC)
    first = apply_poll(db, connection, orders, now)
    second = apply_poll(db, connection, orders, now + timedelta(minutes=1))
    assert (first.created, first.updated) == (len(win), 0)
    assert (second.created, second.updated, second.events, second.gap_detected) == (
        0,
        0,
        0,
        False,
    )


# --- money -----------------------------------------------------------------------------

decimal_strings = st.builds(
    lambda sign, whole, frac: f"{sign}{whole}{'.' + frac if frac is not None else ''}",
    st.sampled_from(["", "-"]),
    st.one_of(st.just("0"), st.from_regex(r"[1-9][0-9]{0,15}", fullmatch=True)),
    st.one_of(st.none(), st.from_regex(r"[0-9]{1,8}", fullmatch=True)),
)


@SETTINGS
@given(text=decimal_strings)
def test_decimal_strings_round_trip_exactly(text: str) -> None:
    """parse_money then format_money gives back the very string received."""
    assert format_money(parse_money(text)) == text
    assert parse_money(text) == Decimal(text)


@SETTINGS
@given(amount=st.decimals(allow_nan=False, allow_infinity=False))
def test_decimals_survive_formatting(amount: Decimal) -> None:
    """Any finite Decimal, published and parsed back, is the same amount."""
    assert parse_money(format_money(amount)) == amount


@SETTINGS
@given(value=st.floats(allow_nan=True, allow_infinity=True))
def test_floats_are_always_refused(value: float) -> None:
    """A binary float is never money, whatever its value."""
    with pytest.raises(RecordError):
        parse_money(value)


@SETTINGS
@given(text=st.sampled_from(["NaN", "sNaN", "Infinity", "-inf", "", "1,5", "1e", "abc"]))
def test_non_finite_and_garbage_strings_are_refused(text: str) -> None:
    """NaN, infinities and non-numbers are refused with RecordError."""
    with pytest.raises(RecordError):
        parse_money(text)


# --- config parsing never raises anything but ConfigError ------------------------------

KEYS = [
    "name",
    "base_url",
    "client_id",
    "client_secret",
    "poll_interval",
    "state_dir",
    "log_level",
    "url",
    "type",
    "path",
    "timeout",
    "max_attempts",
    "listen",
    "secret",
    "dir",
    "concurrency",
    "types",
    "bogus",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            '"band"',
            '"http://127.0.0.1:1/"',
            '"ftp://x/"',
            '"5m"',
            '"-1s"',
            "0",
            "-5",
            "1e400",
            "true",
            "[]",
            '["a", 1]',
            "{}",
            '"${MISSING}"',
            '"${SET:-x}"',
            '"${"',
            '"whsec_!!"',
            '"debug"',
            '"jsonl"',
            '"webhook"',
            '"127.0.0.1:99999"',
            '"postgresql://"',
            '"sqlite:///"',
            "1979-05-27T07:32:00Z",
        ]
    ),
    st.integers(-(2**70), 2**70).map(str),
    st.text(max_size=12).map(json.dumps),
)
HEADERS = st.sampled_from(
    ["[daemon]", "[database]", "[http]", "[pdfs]", "[[connections]]", "[[sinks]]", "[other]"]
)
line = st.one_of(HEADERS, st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), VALUES))
documents = st.one_of(
    st.lists(line, max_size=20).map("\n".join),
    st.text(max_size=200),
)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cfg") / "syncd.toml"


@SETTINGS
@given(text=documents)
def test_config_parsing_raises_only_config_error(config_file: Path, text: str) -> None:
    """Any TOML-ish text either loads or raises ConfigError with a one-line message."""
    config_file.write_text(text, encoding="utf-8", errors="surrogatepass")
    problem = ""
    try:
        load_config(config_file, {"SET": "1"})
    except ConfigError as error:
        problem = str(error)
    assert "\n" not in problem


# --- event ids -------------------------------------------------------------------------


@SETTINGS
@given(
    parts=st.lists(st.one_of(st.integers(), st.text(max_size=10)), max_size=5),
    other=st.text(min_size=1, max_size=10),
)
def test_event_ids_are_deterministic_uuid5(parts: list[object], other: str) -> None:
    """Same parts -> same UUIDv5 id; an extra part -> a different id."""
    first = event_id(*parts)
    assert first == event_id(*parts)
    assert uuid.UUID(first).version == 5
    assert first == str(uuid.uuid5(EVENT_NAMESPACE, "/".join(str(p) for p in parts)))
    assert event_id(*parts, other) != first


@SETTINGS
@given(order_id=st.integers(1, 2**62), version=st.integers(1, 10**6), fields=content)
def test_order_event_ids_ignore_time_and_pdf_url(
    order_id: int, version: int, fields: dict[str, Any]
) -> None:
    """An order event rebuilt later or with another pdf_url keeps its id."""
    order = _order(order_id, fields)
    moved = PurchaseOrder(**{**order.__dict__, "pdf_url": "http://x/print_po.php?token=t"})
    kind = ChangeKind.CREATED if version == 1 else ChangeKind.UPDATED
    a = order_events("band", [OrderChange(kind, order, version)], datetime(2026, 1, 1, tzinfo=UTC))
    b = order_events("band", [OrderChange(kind, moved, version)], datetime(2027, 1, 1, tzinfo=UTC))
    assert [e.id for e in a] == [e.id for e in b]
    assert a[0].id == event_id("band", order_id, version, a[0].type)
    assert "token=" not in a[0].to_json()
    assert "token=" not in b[0].to_json()
